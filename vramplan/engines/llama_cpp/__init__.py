"""llama.cpp (and Ollama, which runs llama.cpp's llama-server): GGUF files, partial offload.

The engine is in engine.py (ENGINE), which the registry names directly: the edge imports only
`options` to check the flags, so a vLLM plan never loads the llama.cpp planner."""
