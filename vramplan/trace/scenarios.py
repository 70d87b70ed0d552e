"""The eager programs the trace runs, written as a user's script would run them.

infer: transformers `generate()`'s memory, by hand (generate() itself reads token values with
    `.item()`, which a FakeTensor has not): one prefill of batch x ctx tokens into a fresh
    cache with last-position logits, the sampler (fp32 copy of the logits, softmax, multinomial),
    then one decode step that appends a token to the cache.
serve: the forward of vLLM's profiling run, `max_num_batched_tokens` tokens and no cache; the
    engine's sampler and paged cache are vLLM's own code and come from the analytic model.
train: two steps of forward + backward + optimizer.step() + zero_grad(set_to_none=True), as the
    HF Trainer runs them; the second (steady-state: optimizer state already allocated) step is
    the one reported.

No attention_mask is passed: for an unpadded, unpacked batch transformers then lets SDPA apply
the causal mask itself (and GQA without repeating K/V), which is what it also does on a GPU when
the 2-D mask is all ones. Passing a FakeTensor mask would make transformers believe it is being
compiled ("tracing") and build a 4-D mask and repeat K/V instead, overcounting.
"""

from __future__ import annotations

import contextlib

import torch

from vramplan.trace import device

from vramplan.trace.tracker import MemoryTracker
from vramplan.trace.training import state_categories


def cache_tensors(cache) -> list[torch.Tensor]:
    """Every tensor a transformers cache object holds (K/V, MLA latents, Mamba states)."""
    out: list[torch.Tensor] = []
    for layer in getattr(cache, "layers", None) or []:
        for v in vars(layer).values():
            if isinstance(v, dict):          # linear-attention layers: {index: conv / ssm state}
                v = list(v.values())
            if isinstance(v, torch.Tensor):
                out.append(v)
            elif isinstance(v, (list, tuple)):
                out.extend(x for x in v if isinstance(x, torch.Tensor))
    return out


def _sample(logits: torch.Tensor) -> torch.Tensor:
    """generate()'s sampling step: `logits[:, -1, :].to(copy=True, dtype=float32)`, softmax,
    multinomial."""
    scores = logits[:, -1, :].to(copy=True, dtype=torch.float32)
    probs = torch.nn.functional.softmax(scores, dim=-1)
    return torch.multinomial(probs, num_samples=1)


def infer(model, batch: int, ctx: int, tr: MemoryTracker) -> None:
    """Prefill + one decode step."""
    with torch.no_grad():
        tr.phase = "inputs"
        ids = torch.zeros(batch, ctx, dtype=torch.long, device=device.current())
        tr.phase = "prefill"
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        nxt = _sample(out.logits)
        del out
        tr.mark("kv_cache", cache_tensors(cache))
        tr.phase = "decode"
        out = model(input_ids=nxt, past_key_values=cache, use_cache=True, logits_to_keep=1)
        nxt = _sample(out.logits)
        del out, nxt
        tr.mark("kv_cache", cache_tensors(cache))


def serve_profile(model, tokens: int, tr: MemoryTracker) -> None:
    """vLLM's profiling forward: `tokens` tokens in one flat batch, no KV cache yet."""
    with torch.no_grad():
        tr.phase = "inputs"
        ids = torch.zeros(1, tokens, dtype=torch.long, device=device.current())
        tr.phase = "profile forward"
        out = model(input_ids=ids, use_cache=False, logits_to_keep=1)
        del out


def train(model, optimizer, batch: int, ctx: int, tr: MemoryTracker, autocast_dtype=None,
          steps: int = 2) -> None:
    """`steps` optimizer steps; the peak is measured over the last one."""
    params = [p for p in model.parameters() if p.requires_grad]
    for step in range(steps):
        tr.phase = "inputs"
        ids = torch.zeros(batch, ctx, dtype=torch.long, device=device.current())
        labels = torch.zeros(batch, ctx, dtype=torch.long, device=device.current())
        if step == steps - 1:
            tr.reset_peak()
        tr.phase = "forward"
        with (torch.autocast(device.kind(), dtype=autocast_dtype) if autocast_dtype is not None
              else contextlib.nullcontext()):
            out = model(input_ids=ids, labels=labels, use_cache=False)
        loss = out.loss
        del out
        tr.phase = "backward"
        loss.backward()
        del loss
        tr.mark("gradients", [p.grad for p in params if p.grad is not None])
        tr.phase = "optimizer step"
        optimizer.step()
        for category, tensors in state_categories(optimizer).items():
            tr.mark(category, tensors)
        tr.phase = "zero_grad"
        optimizer.zero_grad(set_to_none=True)
        del ids, labels
