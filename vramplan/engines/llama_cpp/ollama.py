"""Ollama as an engine: llama.cpp's llama-server with the flags Ollama passes (ollama
llm/llama_server.go and server/sched.go, commit fb30760; docs/llama-cpp.md "Ollama"):

- `-c num_ctx x OLLAMA_NUM_PARALLEL`, `-np OLLAMA_NUM_PARALLEL` (default 1, envconfig/config.go):
  vramplan's --ctx is num_ctx, one request's context; --parallel (or --batch) the parallel requests;
- `--cache-type-k/-v OLLAMA_KV_CACHE_TYPE` (default f16) and `--flash-attn` from
  OLLAMA_FLASH_ATTENTION (default auto): vramplan's --cache-type-k/-v and --flash-attn;
- `-b/-ub num_batch`: 512 by default, raised to 1024 above 4,096 tokens and 2,048 above 32,768
  when the GPU has room (server/sched.go automaticGenerationBatch; vramplan takes the raise);
- no -ngl: llama-server's own fit decides the GPU layers (the solved -ngl, less its 1 GiB margin).

Ollama's default num_ctx depends on the GPUs' total memory (server/routes.go): 4,096 below
23 GiB, 32,768 below 47 GiB, 262,144 above, never past the model's training context."""

from __future__ import annotations

from vramplan.engines.llama_cpp import buffers as B
from vramplan.engines.llama_cpp.engine import LlamaCppEngine
from vramplan.engines.llama_cpp.options import LlamaOptions
from vramplan.units import GiB


def default_num_ctx(total_vram: int) -> int:
    """server/routes.go: the VRAM tiers (47 and 23 GiB, slightly under 48 and 24)."""
    if total_vram >= 47 * GiB:
        return 262144
    if total_vram >= 23 * GiB:
        return 32768
    return 4096


def num_batch(ctx: int) -> int:
    """server/sched.go generationBatchForContext."""
    return 2048 if ctx > 32768 else 1024 if ctx > 4096 else 512


class OllamaEngine(LlamaCppEngine):
    name = "ollama"
    label = "ollama"

    def context(self, o: LlamaOptions, batch: int, ctx: int) -> B.Context:
        n_seq = o.parallel or batch
        nb = o.batch or o.ubatch or num_batch(ctx)
        return B.context(ctx * n_seq, n_seq, nb, o.ubatch or nb, o.kv_unified)

    def warnings(self, s, report) -> list[str]:
        out = super().warnings(s, report)
        vram = s.target.per_gpu_bytes * s.target.count
        default = min(default_num_ctx(vram), s.model.max_position_embeddings or 10**9)
        if s.workload.ctx != default:
            out.append(f"Ollama's default num_ctx on {s.target.count} x {vram / s.target.count / GiB:.0f} GiB "
                       f"is {default:,} (server/routes.go); --ctx {s.workload.ctx:,} plans num_ctx "
                       f"{s.workload.ctx:,}, as OLLAMA_CONTEXT_LENGTH or a Modelfile's num_ctx would set it.")
        return out


ENGINE = OllamaEngine()
