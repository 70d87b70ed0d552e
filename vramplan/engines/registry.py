"""The engines vramplan models, by name. Adding an engine is one package under engines/ that
defines ENGINE, plus one line here. Packages are imported on first use."""

from __future__ import annotations

from functools import cache
from importlib import import_module

from vramplan.engines.base import Engine

PACKAGES = {
    "vllm": "vramplan.engines.vllm",                   # vLLM V1 serving
    "transformers": "vramplan.engines.transformers",   # transformers generate()
    "hf_trainer": "vramplan.engines.hf_trainer",       # HF Trainer + peft + bitsandbytes
    "llama_cpp": "vramplan.engines.llama_cpp.engine",  # llama.cpp (llama-server): GGUF, partial offload
    "ollama": "vramplan.engines.ollama",               # Ollama: llama-server with Ollama's defaults
    "sglang": "vramplan.engines.sglang.engine",        # SGLang (python -m sglang.launch_server)
}


@cache
def engine(name: str) -> Engine:
    if name not in PACKAGES:
        raise KeyError(f"no engine named {name!r}; known: {', '.join(PACKAGES)}")
    return import_module(PACKAGES[name]).ENGINE
