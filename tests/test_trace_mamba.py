"""Nemotron-H's Mamba layers in the trace allocate what the mamba_ssm / causal_conv1d CUDA kernels
allocate (vramplan/trace/mamba.py), not what transformers' reference PyTorch scan allocates on
the trace's CPU device.

The tiny config (tests/data/tiny_nemotron_h.json) mixes Mamba ("M"), MLP ("-") and attention
("*") blocks: "M-*M-". Widths: hidden 32; Mamba 4 heads x 8 dims (intermediate 32), 2 groups,
state 16, chunk 16 (40 tokens = 3 chunks, the last one partial), conv kernel 4, so the in_proj
output (zxbcdt) is 32 (z) + 32 (x) + 2*2*16 (B, C) + 4 (dt) = 132 wide.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from vramplan.engines.hf_trainer.phases import TrainOptions  # noqa: E402
from vramplan.errors import BadInput  # noqa: E402
from vramplan.trace import mamba, run  # noqa: E402
from vramplan.trace.run import Scenario, execute  # noqa: E402

pytestmark = pytest.mark.trace

CONFIG = json.loads((Path(__file__).parent / "data" / "tiny_nemotron_h.json").read_text())
SCENARIOS = {
    "infer": Scenario("infer", 2, 40),                               # prefill (chunked scan) + decode
    "full": Scenario("full", 2, 40, train=TrainOptions()),           # fused training kernel
    "lora": Scenario("lora", 2, 40, train=TrainOptions()),           # peft's default q/k/v/o targets
    "lora_ckpt": Scenario("lora", 2, 40, train=TrainOptions(grad_ckpt=True)),
    "mixed": Scenario("full", 2, 40, dtype="fp32", train=TrainOptions(precision="mixed")),  # autocast
}


def _traced(scenario: Scenario, patched: bool = True):
    """The result and the tracker of a fake run, with or without the kernel emulation."""
    captured = {}
    original = run._result

    def grab(tr, *args, **kwargs):
        captured["tr"] = tr
        return original(tr, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run, "_result", grab)
        if not patched:
            mp.setattr(run.mamba, "cuda_mamba_kernels", contextlib.nullcontext)
        result = execute(CONFIG, scenario, fake=True)
    return result, captured["tr"]


@pytest.mark.parametrize("kind", list(SCENARIOS))
def test_fake_equals_real(kind):
    s = SCENARIOS[kind]
    fake = execute(CONFIG, s, fake=True)
    real = execute(CONFIG, s, fake=False)
    assert fake.phase_peaks == real.phase_peaks
    assert fake.components == real.components
    assert (fake.peak_bytes, fake.phase, fake.op) == (real.peak_bytes, real.phase, real.op)
    assert any("mamba_ssm" in note for note in fake.measured["warnings"])


def test_every_kernel_function_is_emulated(monkeypatch):
    """transformers looks the kernel functions up in the modeling module's namespace at call time
    (the mixer, and its `causal_conv1d_forward` / `mamba2_scan_forward` wrappers): every call
    lands in the emulation. 2 Mamba layers: infer = prefill (conv + chunked scan) and one decode
    step (conv update + selective state update) each; training = the fused kernel, two steps."""
    calls: dict[str, int] = {}
    for name in ("causal_conv1d_fn", "causal_conv1d_update", "mamba_chunk_scan_combined",
                 "selective_state_update", "mamba_split_conv1d_scan_combined"):
        def counted(*args, _name=name, _fn=getattr(mamba, name), **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _fn(*args, **kwargs)
        monkeypatch.setattr(mamba, name, counted)
    execute(CONFIG, SCENARIOS["infer"], fake=True)
    assert calls == {"causal_conv1d_fn": 2, "mamba_chunk_scan_combined": 2, "causal_conv1d_update": 2,
                     "selective_state_update": 2}
    calls.clear()
    execute(CONFIG, SCENARIOS["lora"], fake=True)
    assert calls == {"mamba_split_conv1d_scan_combined": 4}


def _saved_by_layer(tr, layer: int):
    """Storages born in the last forward between layer `layer`'s in_proj and the end of its
    mixer, still alive when the backward starts: what the layer keeps for its backward."""
    step = max(r.born for r in tr.records if r.phase == "inputs")
    forward = [r for r in tr.records if r.phase == "forward" and r.born > step]
    backward = min(r.born for r in tr.records if r.phase == "backward" and r.born > step)
    mixer = f"layers.{layer}.mixer"
    lo = min(r.born for r in forward if r.module.endswith(mixer + ".in_proj"))
    hi = max(r.born for r in forward if mixer in r.module)
    return [r for r in forward if lo <= r.born <= hi and r.alive_at(backward)]


def test_training_keeps_what_the_fused_kernel_saves():
    """MambaSplitConv1dScanCombinedFn saves, besides parameters: zxbcdt (the in_proj output),
    the scan output before the norm, and the norm's fp32 rstd per group and row; transformers
    adds A = -exp(A_log.float()). Layer 3 (the Mamba block after the LoRA attention block, so
    gradients flow through it): 2 x 40 tokens."""
    _, tr = _traced(SCENARIOS["lora"])
    saved = {(r.shape, r.dtype, r.nbytes) for r in _saved_by_layer(tr, 3)}
    assert saved == {
        ((80, 132), "bfloat16", 21_504),      # zxbcdt: 80 x 132 x 2 B = 21,120 -> 512-B blocks
        ((4,), "float32", 512),               # A
        ((2, 40, 4, 8), "bfloat16", 5_120),   # scan output, 80 x 32 x 2 B
        ((160,), "float32", 1_024),           # rstd: 2 groups x 80 rows x 4 B = 640
    }


def test_the_kernels_allocate_less_than_the_reference_scan():
    """Without the patch the CPU run takes transformers' reference scan, and every phase with a
    Mamba layer in it peaks higher:
    - training: layer 3 keeps 362,496 B for its backward instead of 28,160 B. The reference
      forward is plain autograd, so it keeps what the backward of each op needs: fp32 copies of
      x, B, C and dt, the padded chunks, the (b, c, L, L, h) segment-sum decays and G = C.B
      scores (24,576 B each here; seq x chunk per head in general), the per-chunk states and
      their decays, the padded conv output and the gated norm's fp32 intermediates. The fused
      kernel keeps zxbcdt, the scan output and rstd (above) and recomputes the rest;
    - prefill: the reference holds the same fp32 matrices at once inside the scan; the kernels
      hold the fp32 state of each chunk, CB per group, and fp32 dt / dA cumsum;
    - decode: the reference state update builds fp32 dA, dB, dBx and a new (b, h, p, n) state
      before copying it in place; the kernel updates in place and allocates the output only.
    The recurrent state and conv state in the cache are the same either way."""
    for s, phases in ((SCENARIOS["infer"], ("prefill", "decode")), (SCENARIOS["lora"], ("forward", "backward"))):
        kernel, kernel_tr = _traced(s)
        reference, reference_tr = _traced(s, patched=False)
        for phase in phases:
            assert kernel.phase_peaks[phase] < reference.phase_peaks[phase], phase
        if s.mode == "infer":
            assert _cache_bytes(kernel_tr) == _cache_bytes(reference_tr) > 0
        else:
            kept = sum(r.nbytes for r in _saved_by_layer(kernel_tr, 3))
            assert kept == 28_160 and sum(r.nbytes for r in _saved_by_layer(reference_tr, 3)) > 10 * kept


def _cache_bytes(tr) -> int:
    """Every storage the cache held (K/V, conv and SSM states), prefill and decode."""
    return sum(r.nbytes for r in tr.records if r.category == "kv_cache")


def test_a_4bit_out_proj_cannot_enter_the_fused_kernel():
    """mamba_ssm's fused training kernel applies out_proj as F.linear on `out_proj.weight`: with
    bitsandbytes' packed uint8 weight that fails on a GPU too, and the trace says so."""
    s = Scenario("qlora", 2, 40, quant="nf4", train=TrainOptions(grad_ckpt=True))
    with pytest.raises(BadInput, match="out_proj"):
        execute(CONFIG, s, fake=True)
