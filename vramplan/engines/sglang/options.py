"""SGLang's own flags as a user types them (`python -m sglang.launch_server`, SGLang 0.5.23
python/sglang/srt/arg_groups/fields/schedule.py, parallel.py, exec_.py), checked once.

None means SGLang's default, which depends on the card (engines/sglang/budget.py). The context
length is vramplan's --ctx (alias --context-length) and the tensor-parallel size its --tp
(alias --tp-size); these flags are refused under any other engine (request.py)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from vramplan.errors import BadInput
from vramplan.units import parse_tokens, real, shown, whole

# SGLang's largest sensible sizes, to refuse typos early (not SGLang's limits)
MAX_PAGE = 4096
MAX_DP = 1024


@dataclass(frozen=True, kw_only=True)
class SglangFlags:
    """SGLang's flags as given (None: SGLang's default)."""

    mem_fraction_static: float | str | None = None
    page_size: int | str | None = None
    chunked_prefill_size: int | str | None = None   # -1 disables chunked prefill
    max_running_requests: int | str | None = None
    cuda_graph_max_bs: int | str | None = None
    dp_size: int | str | None = None
    ep_size: int | str | None = None
    enable_dp_attention: bool | None = None
    disable_cuda_graph: bool | None = None
    max_total_tokens: int | str | None = None

    def given(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True, kw_only=True)
class SglangOptions:
    """The flags checked: what the SGLang engine plans with (None: SGLang's default)."""

    mem_fraction_static: float | None = None
    page_size: int | None = None
    chunked_prefill_size: int | None = None
    max_running_requests: int | None = None
    cuda_graph_max_bs: int | None = None
    dp_size: int = 1
    ep_size: int = 1
    enable_dp_attention: bool = False
    disable_cuda_graph: bool = False
    max_total_tokens: int | None = None


def _flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise BadInput(f"{{{name}}} must be True or False, got {shown(value)}.")
    return value


def normalize(flags: SglangFlags, tp: int) -> SglangOptions:
    """Check every flag against SGLang's own rules; a bad value raises BadInput naming it."""
    g = flags.given()
    out = {}
    if "mem_fraction_static" in g:
        out["mem_fraction_static"] = real(g["mem_fraction_static"], "{mem_fraction_static}",
                                          lambda x: 0.0 < x < 1.0, "in (0, 1)")
    if "page_size" in g:
        out["page_size"] = whole(g["page_size"], "{page_size}", 1, MAX_PAGE)
    if "chunked_prefill_size" in g:
        text = str(g["chunked_prefill_size"]).strip()
        out["chunked_prefill_size"] = -1 if text == "-1" else parse_tokens(g["chunked_prefill_size"],
                                                                          "{chunked_prefill_size}")
    for name in ("max_running_requests", "cuda_graph_max_bs", "max_total_tokens"):
        if name in g:
            out[name] = parse_tokens(g[name], "{" + name + "}")
    dp = whole(g.get("dp_size", 1), "{dp_size}", 1, MAX_DP)
    ep = whole(g.get("ep_size", 1), "{ep_size}", 1, MAX_DP)
    attention_dp = _flag(g.get("enable_dp_attention", False), "enable_dp_attention")
    if attention_dp and (dp < 2 or tp % dp):
        raise BadInput(f"{{enable_dp_attention}} splits the {tp} tensor-parallel ranks into {{dp_size}} "
                       f"attention groups, so {{dp_size}} must be at least 2 and divide {{tp}} {tp} "
                       f"(got {dp}).")
    if ep > 1 and tp % ep:
        raise BadInput(f"{{ep_size}} {ep} must divide {{tp}} {tp}: SGLang places the experts over the "
                       f"tensor-parallel ranks (moe_tp_size = tp_size / ep_size).")
    return SglangOptions(**out, dp_size=dp, ep_size=ep, enable_dp_attention=attention_dp,
                         disable_cuda_graph=_flag(g.get("disable_cuda_graph", False), "disable_cuda_graph"))
