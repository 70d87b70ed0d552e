"""llama.cpp (and Ollama, which runs llama.cpp's llama-server): GGUF files, partial offload."""

from vramplan.engines.llama_cpp.engine import ENGINE

__all__ = ["ENGINE"]
