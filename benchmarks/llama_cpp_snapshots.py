"""llama.cpp's own pinned quantizer choices against vramplan's plan.

llama.cpp's test suite keeps, per real model, the type `llama-quantize` gives every quantizable
tensor under every mix (tests/snapshots/<model>.schema, written by
tests/test-quant-type-selection.cpp from the published GGUF headers). This script reads those
files from a llama.cpp source tree you point it at and compares them with the types
vramplan/engines/llama_cpp/quantize.py plans from the bundled HF configs. Nothing of llama.cpp is
kept in this repository.

    python benchmarks/llama_cpp_snapshots.py --llama-cpp DIR

DIR is a llama.cpp checkout or the vendor/llama.cpp of an unpacked llama-cpp-python sdist
(`pip download --no-deps --no-binary :all: llama-cpp-python`, then unpack it). The snapshot file
format: `#` comments, a section `[MIX] default_type` per mix, then one `tensor_name type` line for
every tensor whose type is not the default. Exit status 0 when nothing differs, 1 otherwise,
2 when DIR holds no snapshots.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vramplan.engines.llama_cpp import quantize as qz  # noqa: E402
from vramplan.loading import load_model  # noqa: E402

# snapshot file stem -> the bundled HF config of the same checkpoint (same tensor shapes)
BUNDLED = {
    "qwen3-0.6b": "Qwen/Qwen3-0.6B",
    "qwen3-14b": "Qwen/Qwen3-14B",
    "meta-llama-3.1-70b-instruct": "meta-llama/Llama-3.1-70B",   # the base model: same shapes
    "gemma-3-4b-it": "google/gemma-3-4b-it",
    "gpt-oss-120b": "openai/gpt-oss-120b",
}
# why a snapshot whose family is bundled is still skipped
NOT_THE_SAME = {
    "deepseek-v3.1": "bundled is DeepSeek-V3 (not V3.1), and the converter's MLA split "
                     "(attn_k_b/attn_v_b) is not planned",
    "nvidia-nemotron-3-nano-30b-a3b": "bundled is Nemotron-H-56B, a different model",
}
# a known cause for differences that remain
KNOWN = {
    "qwen3-0.6b": "the GGUF llama.cpp read has an output.weight although config.json ties the "
                  "embeddings (so the checkpoint stores lm_head.weight, which conversion/qwen.py "
                  "keeps); vramplan plans from the config: no output.weight, and token_embd takes "
                  "the output rule",
}


@dataclass
class Section:
    default: str
    types: dict[str, str] = field(default_factory=dict)


def read_snapshot(path: Path) -> dict[str, Section]:
    sections: dict[str, Section] = {}
    current = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            mix, _, default = line[1:].partition("]")
            current = sections[mix] = Section(default.strip())
        elif current is not None:
            name, _, type_ = line.rpartition(" ")
            current.types[name] = type_
    return sections


@dataclass
class MixResult:
    mix: str
    compared: int
    differ: list[tuple[str, str, str]]      # (tensor, llama.cpp, vramplan)


def compare(model_id: str, sections: dict[str, Section]) -> list[MixResult]:
    model = load_model(model_id)
    out = []
    for mix, section in sections.items():
        planned = qz.plan_file(model, mix)
        ours = {t.name: t.type for t in planned.tensors if qz.allows_quantization(t.name, len(t.shape))}
        differ = [(n, t, "(absent)") for n, t in section.types.items() if n not in ours]
        for name, type_ in ours.items():
            theirs = section.types.get(name, section.default)
            if type_.lower() != theirs.lower():
                differ.append((name, theirs, type_))
        out.append(MixResult(mix, len(ours), differ))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-cpp", required=True, metavar="DIR", help="a llama.cpp source tree")
    ap.add_argument("--all", action="store_true", help="list every differing tensor")
    args = ap.parse_args(argv)
    snapdir = Path(args.llama_cpp) / "tests" / "snapshots"
    files = sorted(snapdir.glob("*.schema"))
    if not files:
        print(f"{snapdir} holds no *.schema files: give --llama-cpp the root of a llama.cpp source tree.")
        return 2
    mixes_unknown = set()
    total_compared = total_differ = 0
    skipped = []
    print(f"llama.cpp snapshots: {snapdir}")
    for path in files:
        stem = path.stem
        if stem not in BUNDLED:
            skipped.append(f"{path.name} ({NOT_THE_SAME.get(stem, 'no bundled HF config')})")
            continue
        sections = read_snapshot(path)
        for mix in list(sections):
            if qz.mix_name(mix) is None:
                mixes_unknown.add(mix)
                del sections[mix]
        results = compare(BUNDLED[stem], sections)
        compared = sum(r.compared for r in results)
        differ = sum(len(r.differ) for r in results)
        total_compared += compared
        total_differ += differ
        per_mix = results[0].compared
        print(f"\n{path.name} vs {BUNDLED[stem]}: {len(results)} mixes x {per_mix} tensors = "
              f"{compared:,} compared, {differ:,} differ")
        cells = [f"{r.mix} {len(r.differ)}" for r in results]
        for i in range(0, len(cells), 8):
            print("  " + ", ".join(cells[i:i + 8]))
        every = [(r.mix, *d) for r in results for d in r.differ]
        shown = every if args.all else every[:3]
        for mix, name, theirs, ours in shown:
            print(f"    {mix}: {name} llama.cpp {theirs}, vramplan {ours}")
        if len(every) > len(shown):
            print(f"    ... {len(every) - len(shown)} more (--all lists them)")
        if differ and stem in KNOWN:
            print(f"  known cause: {KNOWN[stem]}")
    print(f"\nskipped: {len(skipped) or 'none'}")
    for line in skipped:
        print(f"  {line}")
    if mixes_unknown:
        print(f"mixes vramplan does not know, skipped: {', '.join(sorted(mixes_unknown))}")
    print(f"total: {total_compared:,} tensor types compared, {total_differ:,} differ")
    return 1 if total_differ else 0


if __name__ == "__main__":
    sys.exit(main())
