"""What the mamba_ssm and causal_conv1d CUDA kernels allocate, for the trace's CPU run.

transformers' NemotronH mixer calls five module-level kernel functions, each decorated with
`use_kernel_func_from_hub_with_fallback`: on a GPU with `mamba_ssm` and `causal_conv1d` installed
they run those packages' Triton/CUDA kernels; on any other device (the trace's `cpu`) the
reference PyTorch code, which materializes the chunked scan (per-chunk states, decay matrices,
fp32 copies) and, in training, keeps all of it for the backward. The mixer and its helpers
(`causal_conv1d_forward`, `mamba2_scan_forward`) look the kernel functions up in the module's
namespace at call time, so `cuda_mamba_kernels()` swaps those names for the emulations below
while the trace runs.

Each emulation allocates what the kernel allocates, read from the packages' source: the forward
outputs (shape, dtype, layout), the tensors its autograd.Function saves, the fp32 intermediates
alive inside the forward and the backward (chunk states, dA cumsum, CB, ...) in the order the
Python wrappers create and drop them, and the gradients its backward returns. Nothing is
computed: tensors are allocated (zeros where a value leaves the function, so real-tensor runs of
the same program stay finite), which is all the tracker counts. Sources (state-spaces/mamba,
`mamba_ssm/ops/triton/`, Dao-AILab/causal-conv1d, `causal_conv1d/`):

- `causal_conv1d_fn`: `causal_conv1d_interface.CausalConv1dFn` with `cpp_functions`
  (`causal_conv1d_fwd_function`: `empty_like(x)`; `causal_conv1d_bwd_function`: `empty_like(x)`,
  fp32 `dweight`/`dbias` cast to the weight's dtype).
- `causal_conv1d_update`: `causal_conv1d_update_function`, `empty_like(x)`; state updated in place.
- `mamba_chunk_scan_combined`: `ssd_combined.MambaChunkScanCombinedFn`,
  `_mamba_chunk_scan_combined_fwd` / `_bwd` and the helpers they call (`ssd_chunk_state.py`,
  `ssd_state_passing.py`, `ssd_bmm.py`, `ssd_chunk_scan.py`).
- `mamba_split_conv1d_scan_combined`: `ssd_combined.MambaSplitConv1dScanCombinedFn` (conv, scan,
  gated RMSNorm of `layernorm_gated._layer_norm_fwd` / `_bwd`, out_proj), the training path.
- `selective_state_update`: `selective_state_update.selective_state_update`, `empty_like(x)`;
  state updated in place (single-token decode).

A few split-reduction buffers are sized by the GPU's SM count (`torch.cuda.get_device_properties
().multi_processor_count`); `SM_COUNT` assumes an H100 SXM. They are MiB-scale.
"""

from __future__ import annotations

import contextlib
import importlib
import math

import torch
import torch.nn.functional as F

SM_COUNT = 132          # H100 SXM: sizes mamba_ssm's per-split partial sums (a few MiB)
F32 = torch.float32
_MODULES = ("transformers.models.nemotron_h.modeling_nemotron_h",)


@contextlib.contextmanager
def cuda_mamba_kernels():
    """While the trace runs, NemotronH's kernel functions allocate what the CUDA kernels do."""
    swaps = {"causal_conv1d_fn": causal_conv1d_fn, "causal_conv1d_update": causal_conv1d_update,
             "mamba2_chunk_scan": mamba_chunk_scan_combined,
             "mamba2_selective_state_update": selective_state_update,
             "mamba2_split_conv1d_scan_combined": mamba_split_conv1d_scan_combined}
    saved = []
    for name in _MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for attr, fn in swaps.items():
            if hasattr(module, attr):
                saved.append((module, attr, getattr(module, attr)))
                setattr(module, attr, fn)
    try:
        yield
    finally:
        for module, attr, original in reversed(saved):
            setattr(module, attr, original)


def _empty(shape, dtype, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=like.device)


def _zeros(shape, dtype, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype, device=like.device)


def _nsplits(batch: int, nchunks: int, nheads: int, ngroups: int) -> int:
    """`_chunk_state_bwd_db`, `_chunk_scan_bwd_dC`, `_chunk_scan_bwd_dcb`: heads of a group are
    split across programs so that batch x chunks x heads fills the SMs; one fp32 partial per split."""
    ratio = nheads // ngroups
    per_program = max(min(math.ceil(batch * nchunks * nheads / SM_COUNT), ratio), 1)
    return -(-ratio // per_program)


# --- causal_conv1d ------------------------------------------------------------------------------

class CausalConv1dFn(torch.autograd.Function):
    """`causal_conv1d_interface.CausalConv1dFn`: saves its inputs (x made contiguous only when
    neither the channel nor the time axis is), returns `empty_like(x)` (the channel-last layout of
    transformers' transposed input is kept). Backward: `empty_like(x)` for dx, fp32 dweight and
    dbias, each cast to its parameter's dtype."""

    @staticmethod
    def forward(ctx, x, weight, bias, initial_states, return_final_states):
        if x.stride(2) != 1 and x.stride(1) != 1:
            x = x.contiguous()
        final = None
        if return_final_states:
            batch, dim, _ = x.shape
            final = _zeros((batch, weight.shape[1] - 1, dim), x.dtype, x).transpose(1, 2)
        out = torch.zeros_like(x)
        ctx.save_for_backward(x, weight, bias, initial_states)
        ctx.dinitial = initial_states is not None and initial_states.requires_grad
        return out if final is None else (out, final)

    @staticmethod
    def backward(ctx, dout, *_):
        x, weight, bias, initial_states = ctx.saved_tensors
        if dout.stride(2) != 1 and dout.stride(1) != 1:
            dout = dout.contiguous()
        dx = torch.zeros_like(x)
        dweight = torch.zeros_like(weight, dtype=F32).to(weight.dtype)
        dbias = torch.zeros_like(bias, dtype=F32).to(bias.dtype) if bias is not None else None
        dinitial = None
        if ctx.dinitial:
            batch, dim, _ = x.shape
            dinitial = _zeros((batch, weight.shape[1] - 1, dim), x.dtype, x).transpose(1, 2)
        return dx, dweight, dbias, dinitial, None


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                     final_states_out=None, activation=None, **_):
    return CausalConv1dFn.apply(x, weight, bias, initial_states, return_final_states)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, **_):
    """`causal_conv1d_update_function`: the conv state is updated in place; one output."""
    return torch.zeros_like(x)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, **_):
    """Single-token decode (`selective_state_update.selective_state_update`): the Triton kernel
    updates `state` in place and allocates only `out = torch.empty_like(x)`."""
    return torch.zeros_like(x)


# --- the chunked scan (SSD) ---------------------------------------------------------------------

def _scan_fwd(x, B, C, chunk_size, z=None):
    """`_mamba_chunk_scan_combined_fwd`: (out, out_x, dt, dA_cumsum, states, final_states).

    `_chunk_cumsum_fwd`: dt after bias/softplus/clamp and its cumulative dA, fp32 (b, h, c, L);
    `_chunk_state_fwd(states_in_fp32=True)`: fp32 state of each chunk (b, c, h, p, n);
    `_state_passing_fwd(out_dtype=C.dtype)`: the states passed across chunks in C's dtype and the
    final state in fp32, after which the fp32 chunk states die; `_bmm_chunk_fwd`: CB, fp32
    (b, c, g, L, L), dropped on return; `_chunk_scan_fwd`: out (and out_x with z) in x's dtype."""
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[-2:]
    nchunks = -(-seqlen // chunk_size)
    if B.stride(-1) != 1:
        B = B.contiguous()
    if C.stride(-1) != 1:
        C = C.contiguous()
    if x.stride(-1) != 1 and x.stride(1) != 1:
        x = x.contiguous()
    if z is not None and z.stride(-1) != 1 and z.stride(1) != 1:
        z = z.contiguous()
    dt_out = _empty((batch, nheads, nchunks, chunk_size), F32, x)
    dA_cumsum = _empty((batch, nheads, nchunks, chunk_size), F32, x)
    chunk_states = _empty((batch, nchunks, nheads, headdim, dstate), F32, x)
    states = _empty((batch, nchunks, nheads, headdim * dstate), C.dtype, x)
    final_states = _zeros((batch, nheads, headdim * dstate), F32, x)
    del chunk_states
    CB = _empty((batch, nchunks, ngroups, chunk_size, chunk_size), F32, x)  # noqa: F841 (alive to the end)
    out = _zeros((batch, seqlen, nheads, headdim), x.dtype, x)
    out_x = _zeros((batch, seqlen, nheads, headdim), x.dtype, x) if z is not None else None
    return (out, out_x, dt_out, dA_cumsum, states.view(batch, nchunks, nheads, headdim, dstate),
            final_states.view(batch, nheads, headdim, dstate))


def _scan_bwd(dout, x, dt, A, B, C, chunk_size, D=None, dt_bias=None, initial_states=None,
              dx=None, ddt=None, dB=None, dC=None):
    """`_mamba_chunk_scan_combined_bwd` with z=None (NemotronH gates in the norm): returns
    (dx, ddt, dA, dB, dC, dD, ddt_bias, dinitial_states). The forward's chunk states are not
    saved: they are recomputed in fp32 and passed in fp32, their gradients computed in fp32,
    then both are converted to x's dtype (`_state_passing_bwd`): four state-sized tensors alive at
    once, the layer's backward peak. Gradients the caller passes in (views of its fused dzxbcdt)
    are written, not allocated."""
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[-2:]
    L = chunk_size
    nchunks = -(-seqlen // L)
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    dB = torch.zeros_like(B) if dB is None else dB
    dC = torch.zeros_like(C) if dC is None else dC
    ddt = torch.zeros_like(dt) if ddt is None else ddt
    bhcl = (batch, nheads, nchunks, L)
    dt_in = dt.clone()  # noqa: F841
    dA_cumsum, dt_f = _empty(bhcl, F32, x), _empty(bhcl, F32, x)  # noqa: F841 (_chunk_cumsum_fwd)
    CB = _empty((batch, nchunks, ngroups, L, L), F32, x)  # noqa: F841 (_bmm_chunk_fwd)
    chunk_states = _empty((batch, nchunks, nheads, headdim, dstate), F32, x)
    states = _empty((batch, nchunks, nheads, headdim * dstate), F32, x)   # _state_passing_fwd
    final_unused = _empty((batch, nheads, headdim * dstate), F32, x)  # noqa: F841 (bound to `_`)
    del chunk_states
    dstates = _empty((batch, nchunks, nheads, headdim, dstate), F32, x)  # _chunk_scan_bwd_dstates
    # _state_passing_bwd(dstates_dtype=x.dtype, states_dtype=x.dtype)
    dstates_x = _empty((batch, nchunks, nheads, headdim * dstate), x.dtype, x)
    states_x = _empty(states.shape, x.dtype, x) if x.dtype != F32 else states
    dinitial = _zeros((batch, nheads, headdim, dstate), x.dtype, x) if initial_states is not None else None
    partial = _empty((*bhcl[:3], -(-headdim * dstate // 64)), F32, x)
    ddA_chunk = _empty(bhcl[:3], F32, x)  # noqa: F841
    del partial, dstates, states
    dstates, states = dstates_x, states_x  # noqa: F841 (alive to the end)
    del dstates_x, states_x
    # _chunk_scan_chunk_state_bwd_dx: dD partials per 32 rows, dx, fp32 ddt, dD summed and cast
    partial = _empty((-(-L // 32), batch, nchunks, nheads, 1), F32, x) if D is not None else None
    dx = torch.zeros_like(x) if dx is None else dx
    ddt_f = _empty(bhcl, F32, x)  # noqa: F841
    dD = _zeros((nheads, 1), F32, x).to(D.dtype).view(D.shape) if D is not None else None
    del partial
    # _chunk_state_bwd_db (ddA workspace, fp32 dB per split summed), _chunk_scan_bwd_dC (same for
    # C), _chunk_scan_bwd_dcb (fp32 dCB per split summed); _bmm_chunk_bwd writes into dB and dC
    splits = _nsplits(batch, nchunks, nheads, ngroups)
    ddA_next = _empty(bhcl, F32, x)  # noqa: F841
    partial = _empty((batch, seqlen, splits, ngroups, dstate), F32, x)
    dB_f = _empty((batch, seqlen, ngroups, dstate), F32, x)  # noqa: F841
    del partial
    ddA_cumsum_prev = _empty(bhcl, F32, x)  # noqa: F841
    partial = _empty((batch, seqlen, splits, ngroups, dstate), F32, x)
    dC_f = _empty((batch, seqlen, ngroups, dstate), F32, x)  # noqa: F841
    del partial
    partial = _empty((batch, nchunks, splits, ngroups, L, L), F32, x)
    dCB = _empty((batch, nchunks, ngroups, L, L), F32, x)  # noqa: F841
    del partial
    flipped = _empty(bhcl, F32, x)          # ddA_cumsum_prev.flip(-1).cumsum(-1).flip(-1)
    summed = _empty(bhcl, F32, x)
    del flipped
    ddA_prev = _empty(bhcl, F32, x)  # noqa: F841
    del summed
    partial = _empty((*bhcl[:3], -(-L // 32), L), F32, x)   # _chunk_scan_bwd_ddAcs_stable
    ddA = _empty(bhcl, F32, x)  # noqa: F841
    del partial
    tmp = _empty(bhcl, F32, x)              # ddA += ddA_next + ddA_prev
    del tmp
    ddt_bias = _zeros(dt_bias.shape, F32, x) if dt_bias is not None else None   # _chunk_cumsum_bwd
    dA = _zeros(A.shape, F32, x)
    return dx, ddt, dA, dB, dC, dD, ddt_bias, dinitial


class MambaChunkScanCombinedFn(torch.autograd.Function):
    """`ssd_combined.MambaChunkScanCombinedFn`: saves out, dA_cumsum and its inputs; the chunk
    states, dt and (unless returned) the final state die with the forward."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, return_final_states):
        out, out_x, dt_out, dA_cumsum, states, final_states = _scan_fwd(x, B, C, chunk_size, z)
        ctx.save_for_backward(out if z is None else out_x, x, dt, dA_cumsum, A, B, C, D, z, dt_bias,
                              initial_states)
        ctx.chunk_size = chunk_size
        return (out, final_states) if return_final_states else out

    @staticmethod
    def backward(ctx, dout, *_):
        _out, x, dt, _dA_cumsum, A, B, C, D, z, dt_bias, initial_states = ctx.saved_tensors
        if z is not None:
            raise NotImplementedError("mamba_chunk_scan_combined with z: NemotronH gates in its norm")
        dx, ddt, dA, dB, dC, dD, ddt_bias, dinitial = _scan_bwd(dout, x, dt, A, B, C, ctx.chunk_size, D,
                                                                dt_bias, initial_states)
        return dx, ddt, dA, dB, dC, None, dD, None, ddt_bias, dinitial, None


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                              seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, float("inf")),
                              return_final_states=False, **_):
    return MambaChunkScanCombinedFn.apply(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states,
                                          return_final_states)


# --- the fused training path --------------------------------------------------------------------

class MambaSplitConv1dScanCombinedFn(torch.autograd.Function):
    """`ssd_combined.MambaSplitConv1dScanCombinedFn`, the layout transformers' NemotronH mixer
    uses in training (gated RMSNorm with norm_before_gate=False, out_proj inside, no extra
    non-SSM channels).

    Forward: the conv output (b, s, conv_dim), the scan's forward (above; its dt, dA cumsum,
    passed states and final state stay alive to the end of the forward), the norm's output and
    fp32 rstd per group and row, out_proj (under autocast on a cast copy of the weight). Saved:
    zxbcdt, the scan output (b, s, h*p) and rstd besides the parameters; the conv output and the
    normed output are recomputed in the backward.
    Backward: the recomputed norm output and conv output, dzxbcdt (returned), dxBC, out_proj's
    input gradient, the norm's dx and weight partials, the scan's backward, out_proj's weight
    gradient (computed even when the weight is frozen) and the conv's fp32 dweight/dbias."""

    @staticmethod
    def forward(ctx, zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, rmsnorm_weight, outproj_weight,
                outproj_bias, chunk_size, headdim, ngroups, return_final_states):
        nheads = D.shape[0]
        dim = nheads * headdim
        dstate = (conv1d_weight.shape[0] - dim) // ngroups // 2
        batch, seqlen, width = zxbcdt.shape
        if width != 2 * dim + 2 * ngroups * dstate + nheads or rmsnorm_weight is None:
            raise NotImplementedError("only the zxbcdt layout and gated RMSNorm of transformers' NemotronH mixer")
        if outproj_weight is not None and (not outproj_weight.is_floating_point()
                                           or tuple(outproj_weight.shape[-1:]) != (dim,)):
            raise RuntimeError("mamba_ssm's fused Mamba2 training kernel (mamba_split_conv1d_scan_combined) "
                               "applies out_proj as F.linear on out_proj.weight, which a bitsandbytes 4-bit "
                               "out_proj cannot take")
        kind = zxbcdt.device.type
        ctx.autocast = (kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))
        z, xBC, dt = torch.split(zxbcdt, [dim, dim + 2 * ngroups * dstate, nheads], dim=-1)
        xBC_conv = torch.zeros_like(xBC.transpose(1, 2)).transpose(1, 2)   # causal_conv1d_fwd
        x, B, C = torch.split(xBC_conv, [dim, ngroups * dstate, ngroups * dstate], dim=-1)
        x = x.unflatten(-1, (nheads, headdim))
        B, C = B.unflatten(-1, (ngroups, dstate)), C.unflatten(-1, (ngroups, dstate))
        # as in mamba_ssm, the scan's dt, dA cumsum and states stay alive to the end of the forward
        out_x, _, dt_out, dA_cumsum, states, final_states = _scan_fwd(x, B, C, chunk_size)
        out = torch.zeros_like(out_x.reshape(batch * seqlen, dim))          # _layer_norm_fwd
        rstd = _empty((ngroups * batch * seqlen,), F32, zxbcdt)
        out = out.view(batch, seqlen, dim)
        if outproj_weight is not None:
            if ctx.autocast[1]:
                low = ctx.autocast[2]
                out, outproj_weight = out.to(low), outproj_weight.to(low)
                outproj_bias = outproj_bias.to(low) if outproj_bias is not None else None
            out = F.linear(out, outproj_weight, outproj_bias)
        ctx.save_for_backward(zxbcdt, conv1d_weight, conv1d_bias, out_x, A, D, dt_bias, rmsnorm_weight, rstd,
                              outproj_weight, outproj_bias)
        ctx.shape = (chunk_size, headdim, ngroups)
        return (out, final_states) if return_final_states else out

    @staticmethod
    def backward(ctx, dout, *_):
        kind, enabled, low = ctx.autocast
        with torch.autocast(kind, dtype=low, enabled=enabled):    # custom_bwd: the forward's autocast
            return MambaSplitConv1dScanCombinedFn._backward(ctx, dout)

    @staticmethod
    def _backward(ctx, dout):
        (zxbcdt, conv1d_weight, conv1d_bias, out, A, D, dt_bias, rmsnorm_weight, rstd, outproj_weight,
         outproj_bias) = ctx.saved_tensors
        chunk_size, headdim, ngroups = ctx.shape
        nheads = D.shape[0]
        dim = nheads * headdim
        dstate = (conv1d_weight.shape[0] - dim) // ngroups // 2
        batch, seqlen, _ = zxbcdt.shape
        split = [dim, dim + 2 * ngroups * dstate, nheads]
        out_recompute = _zeros((batch, seqlen, dim), out.dtype, out) if outproj_weight is not None else None
        z, xBC, dt = torch.split(zxbcdt, split, dim=-1)
        xBC_conv = torch.zeros_like(xBC.transpose(1, 2)).transpose(1, 2)   # causal_conv1d_fwd again
        x, B, C = torch.split(xBC_conv, [dim, ngroups * dstate, ngroups * dstate], dim=-1)
        x = x.unflatten(-1, (nheads, headdim))
        B, C = B.unflatten(-1, (ngroups, dstate)), C.unflatten(-1, (ngroups, dstate))
        dzxbcdt = torch.zeros_like(zxbcdt)
        _dz, _dxBC_given, ddt_given = torch.split(dzxbcdt, split, dim=-1)
        dxBC = _empty(xBC.shape, xBC.dtype, xBC)
        dx, dB, dC = torch.split(dxBC, [dim, ngroups * dstate, ngroups * dstate], dim=-1)
        dx = dx.unflatten(-1, (nheads, headdim))
        dB, dC = dB.unflatten(-1, (ngroups, dstate)), dC.unflatten(-1, (ngroups, dstate))
        dout_og = dout
        if outproj_weight is not None:
            dout = F.linear(dout, outproj_weight.t())
        dy_rms = dout.reshape(batch * seqlen, dim)  # noqa: F841 (alive to the end)
        # _layer_norm_bwd(recompute_output=True, dz=dz, out=out_recompute): dx, fp32 dw partials
        group = dim // ngroups
        block_n = min(65536 // out.element_size(), 1 << (group - 1).bit_length())
        warps = min(max(block_n // 256, 1), 8)
        rows = math.ceil(SM_COUNT * math.ceil(4 / warps) / ngroups)
        dx_norm = _zeros((batch * seqlen, dim), out.dtype, out)
        partial = _empty((rows, dim), F32, out)
        drmsnorm_weight = _zeros((dim,), F32, out).to(rmsnorm_weight.dtype)
        del partial
        dout = dx_norm.view(batch, seqlen, nheads, headdim)
        _dx, _ddt, dA, _dB, _dC, dD, ddt_bias, _dinit = _scan_bwd(dout, x, dt, A, B, C, chunk_size, D, dt_bias,
                                                                  None, dx=dx, ddt=ddt_given, dB=dB, dC=dC)
        doutproj_weight = doutproj_bias = None
        if outproj_weight is not None:
            doutproj_weight = torch.einsum("bso,bsd->od", dout_og, out_recompute)
            doutproj_bias = dout_og.sum(dim=(0, 1)) if outproj_bias is not None else None
        # causal_conv1d_bwd_function(dx=dxBC_given): fp32 dweight/dbias cast to the weight's dtype
        dweight = torch.zeros_like(conv1d_weight, dtype=F32).to(conv1d_weight.dtype)
        dbias = torch.zeros_like(conv1d_bias, dtype=F32).to(conv1d_bias.dtype) if conv1d_bias is not None else None
        return (dzxbcdt, dweight, dbias, ddt_bias, dA, dD, drmsnorm_weight, doutproj_weight, doutproj_bias,
                None, None, None, None)


def mamba_split_conv1d_scan_combined(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, chunk_size,
                                     initial_states=None, seq_idx=None, dt_limit=(0.0, float("inf")),
                                     return_final_states=False, activation="silu", rmsnorm_weight=None,
                                     rmsnorm_eps=1e-6, outproj_weight=None, outproj_bias=None, headdim=None,
                                     ngroups=1, norm_before_gate=True, **_):
    if initial_states is not None or D.dim() != 1:
        raise NotImplementedError("only the call transformers' NemotronH mixer makes")
    return MambaSplitConv1dScanCombinedFn.apply(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, rmsnorm_weight,
                                                outproj_weight, outproj_bias, chunk_size, headdim, ngroups,
                                                return_final_states)
