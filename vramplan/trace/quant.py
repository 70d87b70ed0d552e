"""bitsandbytes 4-bit linears (NF4/FP4), laid out and run as bitsandbytes does, without it.

transformers' `replace_with_bnb_linear` turns every `nn.Linear` (and GPT-2's Conv1D), except the
output head and the skip list, into `bnb.nn.Linear4bit`; fused 3-D MoE expert tensors are not
linears and stay in 16 bits. A `Linear4bit` holds (bitsandbytes 0.45+, blocksize 64):

    weight   uint8 [ceil(n/2), 1]         two 4-bit codes per byte
    absmax   fp32 [ceil(n/64)]            or, with double quantization:
             uint8 [ceil(n/64)] + nested absmax fp32 [ceil(n/64/256)] + offset fp32 [], and the
             nested code fp32 [256], one tensor the whole model shares (bitsandbytes caches
             that dynamic map on the device of its first use: `name2qmap`)
    code     fp32 [16]                    the NF4/FP4 lookup table, one per layer

Its forward (`bnb.matmul_4bit` -> `MatMul4Bit`) dequantizes the whole weight for every call with
more than one token or with autograd on: the nested absmax to fp32 [ceil(n/64)], then the weight
to the compute dtype [out, in], then `F.linear`; backward dequantizes again for grad_input and
saves no activation. A single token without grad takes `gemv_4bit`, which dequantizes nothing.
`_Matmul4bit` reproduces exactly these allocations (zeros: values are irrelevant to memory).
peft wraps such a layer in `lora.bnb.Linear4bit`, whose forward clones the base output before
adding the adapter (peft/tuners/lora/bnb.py); `_lora4bit_forward` does the same.

On a GPU with bitsandbytes installed, `use_bitsandbytes` swaps the emulation for the library:
each layer's weight is quantized by `bitsandbytes.functional.quantize_4bit` from random values
on the device and multiplied by `bitsandbytes.matmul_4bit`, so verify measures bitsandbytes'
own storage and kernels; the module around them (and peft's wrapper logic above) stay ours.
"""

from __future__ import annotations

import types

import torch
from torch import nn

from vramplan.memory.weights import NF4_BLOCK, NF4_CODE_VALUES, NF4_DQ_BLOCK, NF4_DQ_CODE_VALUES, is_skipped

_STATE = ("absmax", "nested_absmax", "nested_code", "offset", "code")


class Linear4bit(nn.Module):
    """The storage and the forward allocations of `bnb.nn.Linear4bit`."""

    def __init__(self, linear: nn.Module, double_quant: bool, compute_dtype: torch.dtype,
                 nested_code: torch.Tensor | None = None):
        super().__init__()
        out_f, in_f = _features(linear)
        self.in_features, self.out_features = in_f, out_f
        self.compute_dtype = compute_dtype
        n = out_f * in_f
        self.blocks = -(-n // NF4_BLOCK)
        self.double_quant = double_quant
        meta = dict(device="meta")
        self.weight = nn.Parameter(torch.empty((-(-n // 2), 1), dtype=torch.uint8, **meta),
                                   requires_grad=False)
        if double_quant:
            self.register_buffer("absmax", torch.empty(self.blocks, dtype=torch.uint8, **meta))
            self.register_buffer("nested_absmax", torch.empty(-(-self.blocks // NF4_DQ_BLOCK),
                                                              dtype=torch.float32, **meta))
            self.register_buffer("nested_code", nested_code if nested_code is not None else
                                 torch.empty(NF4_DQ_CODE_VALUES, dtype=torch.float32, **meta))
            self.register_buffer("offset", torch.empty((), dtype=torch.float32, **meta))
        else:
            self.register_buffer("absmax", torch.empty(self.blocks, dtype=torch.float32, **meta))
        self.register_buffer("code", torch.empty(NF4_CODE_VALUES, dtype=torch.float32, **meta))
        bias = getattr(linear, "bias", None)
        self.bias = nn.Parameter(bias.data, requires_grad=False) if bias is not None else None
        self.bnb = None                 # the real bitsandbytes module, after use_bitsandbytes
        self.quant_state = None

    def dequantize(self, like: torch.Tensor) -> torch.Tensor:
        """`F.dequantize_4bit`: nested absmax to fp32 (freed on return), then the weight."""
        absmax = None
        if self.double_quant:
            absmax = torch.zeros(self.blocks, dtype=torch.float32, device=like.device)
        w = torch.zeros((self.out_features, self.in_features), dtype=self.compute_dtype,
                        device=like.device)
        del absmax
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp_dtype = x.dtype
        x = x.to(self.compute_dtype)
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        if self.quant_state is not None:
            out = self.bnb.matmul_4bit(x, self.weight.t(), bias=bias, quant_state=self.quant_state)
        elif x.numel() == x.shape[-1] and not x.requires_grad:
            # gemv_4bit: one token, no autograd; reads the packed weight directly
            out = torch.zeros((*x.shape[:-1], self.out_features), dtype=x.dtype, device=x.device)
            if bias is not None:
                out += bias
        else:
            out = _Matmul4bit.apply(x, self, bias)
        return out.to(inp_dtype)


class _Matmul4bit(torch.autograd.Function):
    """bitsandbytes' MatMul4Bit: dequantize, F.linear; backward dequantizes again."""

    @staticmethod
    def forward(ctx, x, layer, bias):
        ctx.layer = layer
        return nn.functional.linear(x, layer.dequantize(x), bias)

    @staticmethod
    def backward(ctx, grad_out):
        grad_in = None
        if ctx.needs_input_grad[0]:
            grad_in = torch.matmul(grad_out, ctx.layer.dequantize(grad_out))
        return grad_in, None, None


def _features(m: nn.Module) -> tuple[int, int]:
    if isinstance(m, nn.Linear):
        return m.out_features, m.in_features
    w = m.weight                     # transformers' Conv1D stores [in, out]
    return w.shape[1], w.shape[0]


def _lora4bit_forward(self, x, *args, **kwargs):
    """peft's lora.bnb.Linear4bit.forward (vanilla LoRA path): the base output is cloned, the
    input cast to the adapter dtype, the adapter output cast back and added."""
    result = self.base_layer(x, *args, **kwargs).clone()
    for name in self.active_adapters:
        if name not in self.lora_A.keys():
            continue
        lora_A, lora_B = self.lora_A[name], self.lora_B[name]
        expected = result.dtype
        xa = self._cast_input_dtype(x, lora_A.weight.dtype) if not torch.is_autocast_enabled() else x
        output = lora_B(lora_A(self.lora_dropout[name](xa))) * self.scaling[name]
        if not torch.is_autocast_enabled():
            output = output.to(expected)
        result = result + output
    return result


def quantize_linears(model: nn.Module, method: str, double_quant: bool,
                     compute_dtype: torch.dtype, skip: tuple[str, ...] = ()) -> int:
    """Replace the model's linears (on meta) by `Linear4bit`, as transformers'
    `replace_with_bnb_linear` does; the output head (get_keys_to_not_convert) and the skip list
    stay. Returns how many were replaced."""
    if method not in ("nf4", "fp4"):
        raise ValueError(method)
    import transformers
    from transformers.pytorch_utils import Conv1D

    # transformers 5 converts exact nn.Linear only (FalconLinear, a subclass, stays 16-bit); 4.x
    # converted every isinstance (memory/weights.py transformers_bnb plans the same rule)
    exact = int(transformers.__version__.split(".")[0]) >= 5
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    shared = torch.empty(NF4_DQ_CODE_VALUES, dtype=torch.float32, device="meta")   # name2qmap["dynamic"]
    count = 0
    for name, module in list(model.named_modules()):
        base = getattr(module, "base_layer", None)       # a peft LoRA wrapper
        for child_name, child in list(module.named_children()):
            full = _strip_peft(f"{name}.{child_name}" if name else child_name)
            linear = type(child) is nn.Linear if exact else isinstance(child, nn.Linear)
            if not linear and not isinstance(child, Conv1D):
                continue
            if child is head or ".lora_" in f".{full}" or is_skipped(full, skip):
                continue
            setattr(module, child_name, Linear4bit(child, double_quant, compute_dtype, shared))
            count += 1
            if child is base:
                module.forward = types.MethodType(_lora4bit_forward, module)
    return count


def _strip_peft(name: str) -> str:
    """peft adds "base_model.model." and ".base_layer" around the original module path."""
    return name.removeprefix("base_model.model.").replace(".base_layer", "")


def use_bitsandbytes(model: nn.Module, bnb, method: str, double_quant: bool) -> int:
    """After materialize, on the device: every Linear4bit holds what bitsandbytes makes of a
    16-bit weight (random values, quantized on the device one layer at a time, the 16-bit copy
    freed at once) and multiplies with it. Returns how many layers."""
    count = 0
    for m in model.modules():
        if not isinstance(m, Linear4bit):
            continue
        dev = m.weight.device
        w = torch.empty((m.out_features, m.in_features), dtype=m.compute_dtype, device=dev)
        with torch.no_grad():
            w.normal_(0, 0.02)
        packed, state = bnb.functional.quantize_4bit(w, blocksize=NF4_BLOCK, quant_type=method,
                                                     compress_statistics=double_quant)
        del w
        m.weight = nn.Parameter(packed, requires_grad=False)
        for k in _STATE:
            if k in m._buffers:
                m._buffers[k] = None
        m.bnb, m.quant_state = bnb, state
        count += 1
    return count


def _state_of(qs, depth: int = 0) -> list[torch.Tensor]:
    """The tensors a bitsandbytes QuantState holds (absmax, code, offset, the nested state)."""
    out = []
    for v in vars(qs).values():
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif depth < 2 and hasattr(v, "__dict__") and not isinstance(v, (torch.dtype, torch.Size, type)):
            out.extend(_state_of(v, depth + 1))
    return out


def state_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The quantization state of every 4-bit layer: part of the weights' bytes."""
    out = []
    for m in model.modules():
        if isinstance(m, Linear4bit):
            if m.quant_state is not None:
                out.extend(_state_of(m.quant_state))
            out.extend(getattr(m, k) for k in _STATE if getattr(m, k, None) is not None)
    return out
