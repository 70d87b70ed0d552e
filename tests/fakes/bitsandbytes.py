"""A fake `bitsandbytes` for the tests: the calls verify's real-bitsandbytes path makes, with the
storage bitsandbytes 0.45+ allocates (functional.quantize_4bit: the packed uint8 codes and a
QuantState holding absmax, code and, with double quantization, the nested state, whose
"dynamic" code is one tensor per device, cached in name2qmap; matmul_4bit:
dequantize to the compute dtype, then F.linear; optim.AdamW8bit & co: two states per parameter,
uint8 with per-block fp32 absmax for 8-bit, fp32 otherwise). What it cannot fake is the CUDA
kernels themselves: the figures verify records with the real library come from the first GPU
run (benchmarks/gpu_check.sh), not from here. It exists so the wiring (which calls, which
tensors are weights, which records say "emulated") is tested where bitsandbytes cannot run.
"""

from __future__ import annotations

import importlib.machinery
import types

import torch
from torch import nn

BLOCK = 64          # 4-bit quantization block
NESTED_BLOCK = 256  # double quantization block
STATE_BLOCK = 256   # 8-bit optimizer state block


class QuantState:
    def __init__(self, absmax, shape, code, dtype, blocksize, quant_type, offset=None, state2=None):
        self.absmax, self.shape, self.code, self.dtype = absmax, shape, code, dtype
        self.blocksize, self.quant_type, self.offset, self.state2 = blocksize, quant_type, offset, state2


def make() -> types.ModuleType:
    bnb = types.ModuleType("bitsandbytes")
    bnb.__spec__ = importlib.machinery.ModuleSpec("bitsandbytes", None)
    bnb.__version__ = "0.45.0+fake"
    bnb.calls = []
    functional = types.ModuleType("bitsandbytes.functional")
    optim = types.ModuleType("bitsandbytes.optim")
    bnb.functional, bnb.optim = functional, optim

    name2qmap: dict = {}          # functional.name2qmap: the "dynamic" map, made once per device

    def quantize_4bit(A, absmax=None, out=None, blocksize=BLOCK, compress_statistics=False,
                      quant_type="fp4", quant_storage=torch.uint8):
        bnb.calls.append(("quantize_4bit", tuple(A.shape), quant_type, compress_statistics))
        n = A.numel()
        blocks = -(-n // blocksize)
        packed = torch.zeros((-(-n // 2), 1), dtype=torch.uint8, device=A.device)
        code = torch.zeros(16, dtype=torch.float32, device=A.device)
        if compress_statistics:
            if str(A.device) not in name2qmap:
                name2qmap[str(A.device)] = torch.zeros(256, dtype=torch.float32, device=A.device)
            state2 = QuantState(torch.zeros(-(-blocks // NESTED_BLOCK), dtype=torch.float32, device=A.device),
                                None, name2qmap[str(A.device)], torch.float32, NESTED_BLOCK, "dynamic")
            qs = QuantState(torch.zeros(blocks, dtype=torch.uint8, device=A.device), A.shape, code,
                            A.dtype, blocksize, quant_type,
                            offset=torch.zeros((), dtype=torch.float32, device=A.device), state2=state2)
        else:
            qs = QuantState(torch.zeros(blocks, dtype=torch.float32, device=A.device), A.shape, code,
                            A.dtype, blocksize, quant_type)
        return packed, qs

    def dequantize_4bit(A, quant_state):
        if quant_state.state2 is not None:
            torch.zeros(quant_state.absmax.numel(), dtype=torch.float32, device=A.device)
        return torch.zeros(quant_state.shape, dtype=quant_state.dtype, device=A.device)

    functional.quantize_4bit = quantize_4bit
    functional.dequantize_4bit = dequantize_4bit
    functional.QuantState = QuantState

    class MatMul4Bit(torch.autograd.Function):
        @staticmethod
        def forward(ctx, A, B, bias, quant_state):
            ctx.state, ctx.B = quant_state, B
            return nn.functional.linear(A, dequantize_4bit(B, quant_state).to(A.dtype), bias)

        @staticmethod
        def backward(ctx, grad):
            w = dequantize_4bit(ctx.B, ctx.state).to(grad.dtype)
            return (grad @ w if ctx.needs_input_grad[0] else None), None, None, None

    def matmul_4bit(A, B, quant_state, out=None, bias=None):
        bnb.calls.append(("matmul_4bit", tuple(A.shape)))
        return MatMul4Bit.apply(A, B, bias, quant_state)

    bnb.matmul_4bit = matmul_4bit

    class _Adam(torch.optim.Optimizer):
        bits, is_paged = 32, False

        def __init__(self, params, lr=1e-3, **kwargs):
            super().__init__(params, {"lr": lr})
            bnb.calls.append((type(self).__name__,))

        @torch.no_grad()
        def step(self, closure=None):
            manager = GlobalOptimManager.get_instance()
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None or self.state[p]:
                        continue
                    s = self.state[p]
                    bits = manager.overrides.get(id(p), {}).get("optim_bits", self.bits)
                    eight = bits == 8 and p.numel() >= 4096
                    dtype = torch.uint8 if eight else torch.float32
                    s["step"] = 0
                    s["state1"] = torch.zeros_like(p, dtype=dtype)
                    s["state2"] = torch.zeros_like(p, dtype=dtype)
                    if eight:
                        blocks = -(-p.numel() // STATE_BLOCK)
                        s["absmax1"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
                        s["absmax2"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)

    class GlobalOptimManager:
        _instance = None

        def __init__(self):
            self.overrides: dict = {}

        @classmethod
        def get_instance(cls):
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

        def register_module_override(self, module, param_name, config):
            self.overrides[id(getattr(module, param_name))] = config

    for name, bits, paged in (("AdamW8bit", 8, False), ("AdamW32bit", 32, False),
                              ("PagedAdamW8bit", 8, True), ("PagedAdamW32bit", 32, True)):
        setattr(optim, name, type(name, (_Adam,), {"bits": bits, "is_paged": paged}))
    optim.GlobalOptimManager = GlobalOptimManager
    return bnb
