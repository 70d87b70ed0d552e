"""Rules across config keys: the combinations transformers' config classes and model code (or
vLLM's) cannot build or run, checked on the numbers a family parser has read. Each refusal names
the keys, their values and the reason; docs/validation.md ("Model configs") lists them all.

Single keys (types, signs, bounds) are checked as they are read (`Cfg.int`, models/bounds.py).
"""

from __future__ import annotations

from vramplan.errors import BadConfig
from vramplan.models._base import Cfg, show

HEADS = ("num_attention_heads",)
KV_HEADS = ("num_key_value_heads",)


def kv_heads(cfg: Cfg, heads: int, kv: int, heads_keys: tuple[str, ...] = HEADS,
             kv_keys: tuple[str, ...] = KV_HEADS) -> None:
    """Grouped-query attention: every key/value head serves heads/kv query heads, so kv <= heads
    and kv divides heads (transformers' repeat_kv by num_key_value_groups = heads // kv; vLLM's
    QKVParallelLinear)."""
    h, k = cfg.key(*heads_keys), cfg.key(*kv_keys)
    if kv > heads:
        raise BadConfig(f"'{k}' ({kv:,}) in config.json of {cfg.who} is more than '{h}' ({heads:,}); "
                        f"each key/value head serves one or more query heads, so there cannot be more of them.")
    if heads % kv:
        raise BadConfig(f"'{h}' ({heads:,}) in config.json of {cfg.who} is not a multiple of '{k}' ({kv:,}); "
                        f"grouped-query attention gives every key/value head the same number of query heads.")


def hidden_per_head(cfg: Cfg, hidden: int, heads: int, source: str = "",
                    hidden_keys: tuple[str, ...] = ("hidden_size",),
                    heads_keys: tuple[str, ...] = HEADS) -> None:
    """hidden_size a multiple of the heads. `source` names the transformers code that requires it
    whatever head_dim says; without one the rule is checked only where the head size is derived
    as hidden_size // heads (no explicit head_dim), so it is a whole number, not a truncation."""
    if hidden % heads == 0:
        return
    h, n = cfg.key(*hidden_keys), cfg.key(*heads_keys)
    why = (f"which {source} requires" if source else
           "and there is no 'head_dim', so the head size hidden_size / heads would not be whole")
    raise BadConfig(f"'{h}' ({hidden:,}) in config.json of {cfg.who} is not a multiple of '{n}' ({heads:,}), "
                    f"{why}.")


def _rope_objects(cfg: Cfg) -> list[tuple[str, dict]]:
    """The rope_parameters / rope_scaling objects (one per layer kind when nested), checked to be
    objects."""
    out = []
    for key in ("rope_parameters", "rope_scaling"):
        v = cfg.d.get(key)
        if v is None:
            continue
        if not isinstance(v, dict):
            raise cfg.bad(key, f"must be an object or null, got {show(v)}.")
        nested = [(f"{key}.{k}", x) for k, x in v.items() if isinstance(x, dict)]
        out.extend(nested if nested and len(nested) == len(v) else [(key, v)])
    return out


def partial_rotary(cfg: Cfg) -> float:
    """partial_rotary_factor, the share of each head's dimensions rotary embeddings rotate: a
    number in (0, 1] at the top level or in rope_parameters / rope_scaling."""
    factor = cfg.fraction("partial_rotary_factor")
    for key, obj in _rope_objects(cfg):
        v = obj.get("partial_rotary_factor")
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
                raise cfg.bad(f"{key}.partial_rotary_factor", f"must be a fraction in (0, 1], got {show(v)}.")
            factor = float(v)
    return factor


def rotary_head(cfg: Cfg, head_dim: int, key: str | None = "head_dim") -> None:
    """Rotary embeddings rotate pairs of dimensions: a fully rotated head of odd size cannot be
    (transformers' RotaryEmbeddingConfigMixin.validate_rope, which lets heads of 4 or fewer pass
    for test fixtures; so do we). `key` None: the head size is derived, hidden_size / heads."""
    factor = partial_rotary(cfg)
    if head_dim > 4 and head_dim % 2 and int(head_dim * factor) == head_dim:
        what = f"'{cfg.key(key)}' ({head_dim:,})" if key else f"the head size hidden_size / heads ({head_dim:,})"
        raise BadConfig(f"{what} in config.json of {cfg.who} is odd, but rotary position embeddings rotate "
                        f"pairs of dimensions (transformers refuses it too).")


def top_k(cfg: Cfg, k: int, experts: int, k_keys: tuple[str, ...], e_keys: tuple[str, ...]) -> None:
    """A token is routed to top_k of the layer's experts (torch.topk over the router's scores)."""
    if k > experts:
        raise BadConfig(f"'{cfg.key(*k_keys)}' ({k:,}) in config.json of {cfg.who} is more than "
                        f"'{cfg.key(*e_keys)}' ({experts:,}); a token cannot be routed to more experts "
                        f"than the layer has.")


def expert_groups(cfg: Cfg, experts: int, k: int, n_group: int, topk_group: int, min_size: int) -> None:
    """Group-limited routing (DeepSeek-V3's router; V2's group_limited_greedy): the experts split
    into n_group equal groups of at least `min_size` (V3 scores a group by its two best experts),
    the router keeps topk_group of them, and each token's top_k experts come from those."""
    e, g, t = cfg.key("n_routed_experts"), cfg.key("n_group"), cfg.key("topk_group")
    if experts % n_group:
        raise BadConfig(f"'{e}' ({experts:,}) in config.json of {cfg.who} is not a multiple of '{g}' "
                        f"({n_group:,}); the router splits the experts into equal groups.")
    size = experts // n_group
    if size < min_size:
        raise BadConfig(f"'{g}' ({n_group:,}) in config.json of {cfg.who} leaves {size} expert(s) per group; "
                        f"the router scores each group by its best {min_size} experts.")
    if topk_group > n_group:
        raise BadConfig(f"'{t}' ({topk_group:,}) in config.json of {cfg.who} is more than '{g}' ({n_group:,}); "
                        f"the router cannot keep more groups than there are.")
    if k > topk_group * size:
        raise BadConfig(f"'{cfg.key('num_experts_per_tok')}' ({k:,}) in config.json of {cfg.who} is more "
                        f"than the {topk_group * size:,} experts in the {topk_group:,} group(s) the router "
                        f"keeps ('{t}' x experts per group).")


def attention_heads(cfg: Cfg, hidden: int, *, hidden_per_head_source: str = "",
                    rope: bool = True) -> tuple[int, int, int]:
    """(heads, kv_heads, head_dim) of a standard attention block, checked as the model code
    checks them: GQA groups, hidden_size a multiple of the heads (always when
    `hidden_per_head_source` names the code that requires it, else only when head_dim is derived),
    and a rotatable head."""
    heads = cfg.int("num_attention_heads")
    kv = cfg.int("num_key_value_heads", default=heads)
    kv_heads(cfg, heads, kv)
    explicit = cfg.int("head_dim", default=None)
    if hidden_per_head_source or explicit is None:
        hidden_per_head(cfg, hidden, heads, hidden_per_head_source)
    head_dim = explicit or hidden // heads
    if rope:
        rotary_head(cfg, head_dim, "head_dim" if explicit else None)
    return heads, kv, head_dim


__all__ = ["attention_heads", "kv_heads", "hidden_per_head", "partial_rotary", "rotary_head", "top_k", "expert_groups"]
