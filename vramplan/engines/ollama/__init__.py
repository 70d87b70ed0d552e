"""Ollama: llama.cpp's llama-server with Ollama's defaults (engines/llama_cpp/ollama.py)."""

from vramplan.engines.llama_cpp.ollama import ENGINE

__all__ = ["ENGINE"]
