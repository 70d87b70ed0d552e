"""vLLM V1 serving: the memory budget, the profile run, the paged KV cache and start-up checks."""

from vramplan.engines.vllm.engine import ENGINE

__all__ = ["ENGINE"]
