"""SGLang plans: the lines SGLang itself logs at start-up, in its words and units (its "GB" is
2**30 bytes), so a user can hold them against a real server's log (docs/sglang.md)."""

from __future__ import annotations

from dataclasses import asdict

from vramplan.spec import Plan, SglangReport
from vramplan.units import GiB, fmt_gib


def _gb(n: int) -> str:
    return f"{n / GiB:.2f} GB"


def capacity_note(r: SglangReport) -> str:
    return f" = weights + token pool (mem_fraction_static {r.mem_fraction_static:g}) + what lives outside it"


def sglang_lines(p: Plan) -> list[str]:
    r = p.sglang
    if r is None:
        return []
    w = p.workload
    dp = ""
    if r.dp_size > 1:
        dp = f" --dp-size {r.dp_size}" + (" --enable-dp-attention" if r.dp_attention else "")
    ep = f" --ep-size {r.ep_size}" if r.ep_size > 1 else ""
    graphs = f"--cuda-graph-max-bs {r.cuda_graph_max_bs}" if r.cuda_graph_max_bs else "--disable-cuda-graph"
    out = ["", f"SGLang    {r.version}: --mem-fraction-static {r.mem_fraction_static:g} --chunked-prefill-size "
               f"{r.chunked_prefill_size} {graphs} --page-size {r.page_size} --context-length {r.context_len} "
               f"--tp-size {w.serve.tp}" + (f" --pp-size {w.serve.pp}" if w.serve.pp > 1 else "") + dp + ep]
    if r.fraction_rule:
        out.append(f"          mem_fraction_static: {r.fraction_rule}")
    out.append("          SGLang would log:")
    out.append(f"            Load weight begin. avail mem={_gb(r.pre_load_free_bytes)}")
    if r.after_load_free_bytes >= 0:
        out.append(f"            Load weight end. avail mem={_gb(r.after_load_free_bytes)}, mem usage={_gb(r.weight_bytes)}.")
    if r.max_total_num_tokens > 0 and not r.refusal:
        if "mla" in _kinds(p):
            out.append(f"            KV Cache is allocated. #tokens: {r.max_total_num_tokens}, "
                       f"KV size: {_gb(r.kv_size_bytes)}")
        else:
            out.append(f"            KV Cache is allocated. #tokens: {r.max_total_num_tokens}, "
                       f"K size: {_gb(r.kv_size_bytes // 2)}, V size: {_gb(r.kv_size_bytes // 2)}")
        out.append(f"            max_total_num_tokens={r.max_total_num_tokens}, chunked_prefill_size="
                   f"{r.chunked_prefill_size}, max_prefill_tokens=16384, max_running_requests="
                   f"{r.max_running_requests}, context_len={r.context_len}, available_gpu_mem="
                   f"{_gb(r.available_gpu_mem_bytes)}")
        per_request = -(-w.ctx // r.page_size) * r.page_size
        out.append(f"          pool holds {r.max_total_num_tokens // per_request:,} request(s) of {w.ctx:,} tokens at "
                   f"once; {r.cell_bytes:,} B of KV per token on this GPU")
    items = ", ".join(f"{k.replace('_', ' ')} {fmt_gib(v)}" for k, v in r.outside_static.items())
    out.append(f"          outside the static fraction: {items} "
               f"({'fits' if r.headroom_ok else 'does NOT fit'} in what is left)")
    if r.refusal:
        out.append(f"          SGLang would refuse to start: {r.refusal}")
    elif not r.headroom_ok:
        out.append("          SGLang would run out of memory after sizing its pool (capturing CUDA graphs or on "
                   "the first long prefill)")
    return out


def _kinds(p: Plan) -> set[str]:
    return {getattr(l.mixer, "kind", "") for l in p.model.layers}


def sglang_json(r: SglangReport | None) -> dict | None:
    return None if r is None else asdict(r)
