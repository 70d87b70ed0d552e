"""CUDA_VISIBLE_DEVICES, interpreted the way the CUDA runtime does, against NVML's devices.

Why here and not in torch: a probe must not create a CUDA context (it costs ~0.3-0.6 GiB and
changes the very figures we read), so we re-implement the documented rules (CUDA C Programming
Guide, "CUDA Environment Variables"):

* a comma-separated list of integer indices, GPU UUIDs ("GPU-8932f937-..." or any unique
  prefix of one), or MIG UUIDs ("MIG-<uuid>", or the R450/R460 form "MIG-GPU-<uuid>/<gi>/<ci>");
* devices are enumerated in the order listed; the first entry that names nothing (or a device
  already listed) ends the list: "0,2,-1,1" makes 0 and 2 visible;
* unset: every device; set but empty: none.

A GPU in MIG mode is not itself a CUDA device: its MIG instances are, and CUDA enumerates **one
MIG device per process** (NVIDIA MIG User Guide, "CUDA Device Enumeration": "regardless of how
many MIG devices are created (or made available to a container), a single CUDA process can only
enumerate a single MIG device"): the first one selected; whole GPUs listed beside it keep their
places. Which instance "first" is when CUDA_VISIBLE_DEVICES does not name one is our reading of
NVML's slot order; verify does not rely on it, it maps devices by the UUID torch reports.
Integer indices are NVML's (PCI bus) order, which CUDA uses only under
CUDA_DEVICE_ORDER=PCI_BUS_ID.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """A GPU as the selection needs it: its NVML index, UUID and MIG instances."""

    index: int
    uuid: str | None
    mig_enabled: bool
    migs: tuple[tuple[int, str | None, int | None, int | None], ...] = ()  # (slot, uuid, gi, ci)


Selected = tuple[int, "int | None"]    # (GPU index, MIG slot or None)


def _expand(c: Candidate) -> list[Selected]:
    return [(c.index, slot) for slot, *_ in c.migs] if c.mig_enabled else [(c.index, None)]


def _by_prefix(items: list[tuple[str | None, object]], text: str):
    hits = [obj for uuid, obj in items if uuid and uuid.lower().startswith(text.lower())]
    return hits[0] if len(hits) == 1 else None


def _one(entry: str, gpus: list[Candidate]) -> list[Selected] | None:
    if entry.lstrip("-").isdigit():
        i = int(entry)
        return _expand(gpus[i]) if 0 <= i < len(gpus) else None
    low = entry.lower()
    if low.startswith("gpu-"):
        c = _by_prefix([(g.uuid, g) for g in gpus], entry)
        return _expand(c) if c else None
    if low.startswith("mig-gpu-"):              # MIG-GPU-<uuid>/<gi>/<ci>
        parts = entry[4:].split("/")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            return None
        c = _by_prefix([(g.uuid, g) for g in gpus], parts[0])
        if c is None:
            return None
        hits = [(c.index, slot) for slot, _, gi, ci in c.migs
                if (gi, ci) == (int(parts[1]), int(parts[2]))]
        return hits or None
    if low.startswith("mig-"):
        items = [(uuid, (g.index, slot)) for g in gpus for slot, uuid, _, _ in g.migs]
        hit = _by_prefix(items, entry)
        return [hit] if hit else None
    return None


def select(value: str | None, gpus: list[Candidate]) -> tuple[list[Selected], list[Selected], str | None]:
    """CUDA device order as (GPU index, MIG slot) pairs; the MIG instances selected but left out
    because CUDA enumerates one MIG device per process; a warning if an entry ended the list."""
    warning = None
    if value is None:
        chosen = [s for g in gpus for s in _expand(g)]
    else:
        chosen = []
        for raw in value.split(","):
            entry = raw.strip()
            if not entry and value.strip() == "":
                break
            picked = _one(entry, gpus)
            if picked is None or any(p in chosen for p in picked):
                why = "names no device" if picked is None else "repeats a device"
                warning = (f"CUDA_VISIBLE_DEVICES entry '{entry}' {why}; CUDA ignores it and "
                           "every entry after it.")
                break
            chosen += picked
    migs = [s for s in chosen if s[1] is not None]
    dropped = migs[1:]
    return [s for s in chosen if s not in dropped], dropped, warning
