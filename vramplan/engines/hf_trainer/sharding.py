"""Sharded training as the libraries do it: DeepSpeed ZeRO-1/2/3 with its buffers and defaults,
CPU offload, and FSDP full / hybrid / grad-op sharding (docs/training.md section 8).

Why a module of its own: what a ZeRO stage holds besides the shards is DeepSpeed's code, not the
ZeRO paper's arithmetic: the fp32 copy of each rank's gradient partition for the optimizer step,
the reduce (IPG) buckets, ZeRO-3's live and persistent parameters. Read in DeepSpeed at commit
edaa72212 (deepspeedai/DeepSpeed, 2026): deepspeed/runtime/zero/config.py (defaults),
stage_1_and_2.py, stage3.py, runtime/utils.py; the HF Trainer's "auto" values in transformers
integrations/deepspeed.py:234-244.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.errors import BadInput
from vramplan.units import shown

# DeepSpeed defaults, deepspeed/runtime/zero/config.py (elements, not bytes)
REDUCE_BUCKET = 500_000_000             # :113 reduce_bucket_size = 5e8
ALLGATHER_BUCKET = 500_000_000          # :132 allgather_bucket_size = 5e8
SUB_GROUP = 1_000_000_000               # :175 sub_group_size = 1e9
PREFETCH_BUCKET = 50_000_000            # :215 stage3_prefetch_bucket_size = 5e7
PERSISTENCE_THRESHOLD = 100_000         # :221 stage3_param_persistence_threshold = 1e5
MAX_LIVE = 1_000_000_000                # :238 stage3_max_live_parameters = 1e9
AUTO = -1                               # "auto": the HF Trainer fills it from hidden_size
FSDP_MODES = ("full_shard", "hybrid_shard", "shard_grad_op", "hybrid_shard_zero2")
DEFAULT_GPUS_PER_NODE = 8               # hybrid shard: the shard group is one node


@dataclass(frozen=True, kw_only=True)
class ZeroConfig:
    """DeepSpeed's zero_optimization section, with DeepSpeed's defaults for what it omits."""

    stage: int = 0
    reduce_bucket_size: int = REDUCE_BUCKET
    allgather_bucket_size: int = ALLGATHER_BUCKET
    overlap_comm: bool | None = None         # None: stage == 3 (config.py:383-386 overlap_comm_valid)
    contiguous_gradients: bool = True        # config.py:102
    sub_group_size: int = SUB_GROUP
    prefetch_bucket_size: int = PREFETCH_BUCKET
    param_persistence_threshold: int = PERSISTENCE_THRESHOLD
    max_live_parameters: int = MAX_LIVE
    offload_optimizer: bool = False          # offload_optimizer.device cpu or nvme
    offload_param: bool = False              # offload_param.device cpu or nvme (stage 3)

    @property
    def overlap(self) -> bool:
        return self.stage == 3 if self.overlap_comm is None else self.overlap_comm

    def resolved(self, hidden: int) -> ZeroConfig:
        """The HF Trainer's "auto" values (transformers integrations/deepspeed.py:234-244):
        reduce_bucket_size hidden², stage3_prefetch_bucket_size 0.9 hidden²,
        stage3_param_persistence_threshold 10 hidden."""
        def pick(v, auto):
            return auto if v == AUTO else v
        return ZeroConfig(
            stage=self.stage, reduce_bucket_size=pick(self.reduce_bucket_size, hidden * hidden),
            allgather_bucket_size=self.allgather_bucket_size, overlap_comm=self.overlap_comm,
            contiguous_gradients=self.contiguous_gradients, sub_group_size=self.sub_group_size,
            prefetch_bucket_size=pick(self.prefetch_bucket_size, int(0.9 * hidden * hidden)),
            param_persistence_threshold=pick(self.param_persistence_threshold, 10 * hidden),
            max_live_parameters=self.max_live_parameters, offload_optimizer=self.offload_optimizer,
            offload_param=self.offload_param)


def _count(value, key: str, default: int) -> int:
    """A DeepSpeed size: an int, a float such as 5e8, "auto", or absent."""
    if value is None:
        return default
    if isinstance(value, str) and value.strip().lower() == "auto":
        return AUTO
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0 or value > 2**62:
        raise BadInput(f"{{deepspeed}} zero_optimization.{key} must be a number of elements or \"auto\", "
                       f"got {shown(value)}.")
    return int(value)


def _flag(value, key: str, default):
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return default
    if not isinstance(value, bool):
        raise BadInput(f"{{deepspeed}} zero_optimization.{key} must be true or false, got {shown(value)}.")
    return value


def _offloaded(section, key: str) -> bool:
    if section is None:
        return False
    if not isinstance(section, dict):
        raise BadInput(f"{{deepspeed}} zero_optimization.{key} must be an object such as {{\"device\": \"cpu\"}}.")
    device = str(section.get("device", "none")).strip().lower()
    if device not in ("none", "cpu", "nvme", "auto"):
        raise BadInput(f"{{deepspeed}} zero_optimization.{key}.device must be none, cpu or nvme, got {shown(device)}.")
    return device in ("cpu", "nvme")


def parse_deepspeed(config) -> ZeroConfig:
    """A DeepSpeed JSON config (already read: a dict) -> its ZeRO settings. Only what changes
    GPU memory is read; everything else is DeepSpeed's business."""
    if not isinstance(config, dict):
        raise BadInput(f"{{deepspeed}} must be a DeepSpeed config (a JSON file or a dict), got {shown(config)}.")
    z = config.get("zero_optimization") or {}
    if not isinstance(z, dict):
        raise BadInput("{deepspeed} zero_optimization must be an object.")
    stage = z.get("stage", 0)
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise BadInput(f"{{deepspeed}} zero_optimization.stage must be 0, 1, 2 or 3, got {shown(stage)}.")
    allgather = z.get("allgather_bucket_size", z.get("allgather_size"))     # config.py:64 old name
    return ZeroConfig(
        stage=stage,
        reduce_bucket_size=_count(z.get("reduce_bucket_size"), "reduce_bucket_size", REDUCE_BUCKET),
        allgather_bucket_size=_count(allgather, "allgather_bucket_size", ALLGATHER_BUCKET),
        overlap_comm=_flag(z.get("overlap_comm"), "overlap_comm", None),
        contiguous_gradients=_flag(z.get("contiguous_gradients"), "contiguous_gradients", True),
        sub_group_size=_count(z.get("sub_group_size"), "sub_group_size", SUB_GROUP),
        prefetch_bucket_size=_count(z.get("stage3_prefetch_bucket_size"), "stage3_prefetch_bucket_size",
                                    PREFETCH_BUCKET),
        param_persistence_threshold=_count(z.get("stage3_param_persistence_threshold"),
                                           "stage3_param_persistence_threshold", PERSISTENCE_THRESHOLD),
        max_live_parameters=_count(z.get("stage3_max_live_parameters"), "stage3_max_live_parameters", MAX_LIVE),
        offload_optimizer=_offloaded(z.get("offload_optimizer"), "offload_optimizer"),
        offload_param=_offloaded(z.get("offload_param"), "offload_param"),
    )


@dataclass(frozen=True, kw_only=True)
class FsdpConfig:
    """FSDP as the HF Trainer's `fsdp` argument names it (transformers FSDPOption)."""

    mode: str = "full_shard"
    offload: bool = False            # CPUOffload(Policy): parameters, gradients and optimizer on CPU
    gpus_per_node: int = DEFAULT_GPUS_PER_NODE

    @property
    def stage(self) -> int:
        return 2 if self.mode in ("shard_grad_op", "hybrid_shard_zero2") else 3


def parse_fsdp(value, gpus_per_node: int | None = None) -> FsdpConfig:
    """'full_shard auto_wrap', 'hybrid_shard offload', ... (the Trainer's words; auto_wrap has no
    memory effect of its own)."""
    words = value.split() if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if not words:
        raise BadInput(f"{{fsdp}} must name a sharding strategy such as full_shard or hybrid_shard, got {shown(value)}.")
    words = [str(w).strip().lower() for w in words]
    modes = [w for w in words if w in FSDP_MODES]
    unknown = [w for w in words if w not in FSDP_MODES and w not in ("offload", "auto_wrap")]
    if unknown or len(modes) != 1:
        raise BadInput(f"{{fsdp}} {shown(value)}: give one of {', '.join(FSDP_MODES)}, optionally with offload "
                       f"(and auto_wrap).")
    return FsdpConfig(mode=modes[0], offload="offload" in words,
                      gpus_per_node=gpus_per_node or DEFAULT_GPUS_PER_NODE)
