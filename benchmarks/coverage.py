"""The oracle over transformers: every model type with a causal-LM or image-text-to-text class,
parameters and KV per token from transformers itself against the analytic tier.

    python benchmarks/coverage.py                          # the full sweep -> docs/coverage.md
    python benchmarks/coverage.py --types starcoder2,phi --json    # a few types, JSON on stdout
    python benchmarks/coverage.py --configs-only            # the realistic configs only

For each model type the config class's defaults (and every realistic config in
configs/models/*.json and tests/data/popular/*.json) are built on the meta device
(vramplan/derive/meta.py: unique parameter storages, tied once) and prefilled on fake tensors
(vramplan/derive/kv.py: each cache layer's K/V per token and recurrent state); the analytic tier
(models.parse, no torch) is asked the same. Nothing tracebacks: every failure is a row with its
error class. Status per row: exact, within 1%, approximate-labelled (off by more, but the
analytic plan says `approximate`), WRONG (off by more than 1 % without that label), refused
(the analytic tier refuses the config), oracle-error (transformers itself cannot build or run
the config). The full sweep takes many minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vramplan.derive import oracle  # noqa: E402  (the checkout's vramplan, first on the path)

REALISTIC = (ROOT / "configs" / "models", ROOT / "tests" / "data" / "popular")
JOBS_PER_WORKER = 40     # a fresh worker now and then: what a model's code leaks stays bounded
STATUSES = ("exact", "within 1%", "approximate-labelled", "WRONG", "refused", "oracle-error")


def realistic_configs() -> list[tuple[str, Path]]:
    out = []
    for folder in REALISTIC:
        if folder.is_dir():
            out.extend((p.stem, p) for p in sorted(folder.glob("*.json")))
    return out


def run_defaults(model_type: str, limit: float) -> oracle.Row:
    try:
        raw = oracle.default_config(model_type)
    except Exception as e:      # noqa: BLE001 - the config class itself refuses its defaults
        side = oracle.Side(error=oracle._error(e))
        return oracle.Row(name=model_type, model_type=model_type, source="defaults",
                          oracle=side, analytic=oracle.Side(error="not run"))
    return oracle.compare(raw, model_type, "defaults", limit)


def run_file(name: str, path: Path, limit: float) -> oracle.Row:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return oracle.Row(name=name, model_type="", source=str(path.relative_to(ROOT)),
                          oracle=oracle.Side(error=oracle._error(e)), analytic=oracle.Side(error="not run"))
    return oracle.compare(raw, name.replace("--", "/"), str(path.relative_to(ROOT)), limit)


def run_job(job: tuple[str, str], limit: float) -> oracle.Row:
    kind, what = job
    if kind == "defaults":
        return run_defaults(what, limit)
    path = Path(what)
    return run_file(path.stem, path, limit)


def worker(limit: float) -> int:
    """`--worker`: jobs as JSON lines on stdin, one Row as a JSON line on stdout per job."""
    for line in sys.stdin:
        job = tuple(json.loads(line))
        row = run_job(job, limit)
        print(json.dumps(row.to_json()), flush=True)
    return 0


def run_isolated(jobs: list[tuple[str, str]], limit: float, say) -> list[oracle.Row]:
    """Every job in a worker process, so that a model whose code crashes the interpreter or runs
    past the time limit costs its own row only: the worker is killed and a new one takes the
    remaining jobs. Each worker imports torch and transformers once for many jobs."""
    import select
    import subprocess

    rows: list[oracle.Row] = []
    pending = list(jobs)
    while pending:
        proc = subprocess.Popen([sys.executable, __file__, "--worker", "--limit", str(limit)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, bufsize=1)
        try:
            for _ in range(JOBS_PER_WORKER):
                if not pending:
                    break
                job = pending[0]
                proc.stdin.write(json.dumps(list(job)) + "\n")
                proc.stdin.flush()
                # the worker's own limit fires first; this one covers a hang in C code and the import
                ready, _, _ = select.select([proc.stdout], [], [], limit + 90)
                line = proc.stdout.readline() if ready else ""
                pending.pop(0)
                if not line:
                    kind, what = job
                    name = what if kind == "defaults" else Path(what).stem
                    why = "TimeLimit: no answer in time" if not ready else \
                        f"Crash: the worker process died (exit {proc.poll()})"
                    row = oracle.Row(name=name, model_type=name if kind == "defaults" else "",
                                     source=kind if kind == "defaults" else what,
                                     oracle=oracle.Side(error=why), analytic=oracle.Side())
                    rows.append(row)
                    say(row)
                    break
                row = oracle.row_from_json(json.loads(line))
                rows.append(row)
                say(row)
        finally:
            proc.kill()
            proc.wait()
    return rows


def _pct(e: float | None) -> str:
    if e is None:
        return ""
    if e == 0:
        return "0"
    return f"{e * 100:+.2f} %"


def _n(v: int | None) -> str:
    return "" if v is None else f"{v:,}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(rows: list[oracle.Row], versions: dict, seconds: float) -> str:
    defaults = [r for r in rows if r.source == "defaults"]
    files = [r for r in rows if r.source != "defaults"]
    lines = ["# Coverage: the analytic tier against transformers", "",
             "Generated by `python benchmarks/coverage.py` (do not edit by hand) with "
             + ", ".join(f"{k} {v}" for k, v in versions.items())
             + f"; {sum(r.seconds for r in rows) / 60:.1f} min of per-config time on a shared 2-core machine. "
             "The rows are in `benchmarks/coverage.json` (`python benchmarks/coverage.py --json > "
             "benchmarks/coverage.json` for the full sweep; `--render benchmarks/coverage.json` rewrites this "
             "page from it; `--types a,b --merge benchmarks/coverage.json --json` refreshes a few rows; "
             "`--types starcoder2,phi --json` checks a few types).", "",
             "For every model type of the installed transformers that has a causal-LM or image-text-to-text "
             "class, the config class's defaults, and every realistic config in `configs/models/` and "
             "`tests/data/popular/`: the **oracle** builds the model on the meta device and counts its "
             "parameters exactly (unique storages, tied weights once: `vramplan/derive/meta.py`), and reads "
             "each layer's cache after a prefill on fake tensors (`vramplan/derive/kv.py`: K/V per token, "
             "recurrent state per sequence); the **analytic** tier is `models.parse`, what `vramplan fit` "
             "reads without torch. KV is bytes per token per sequence in bf16, all layers, below any window; "
             "state is the per-sequence recurrent state in elements, in transformers' layout (conv state "
             "with all `conv_kernel` columns). Status: exact; within 1%; approximate-labelled (off by more, "
             "labelled `approximate` by the analytic plan); WRONG (off by more than 1 % without that label); "
             "refused (the analytic tier refuses the config: exit 2); oracle-error (transformers itself "
             "cannot build or run the config, e.g. a library it needs is missing, or its defaults are "
             "inconsistent). Column **auto**: what `vramplan fit` answers when transformers is installed "
             "(`--layers-from auto`): the family module's status where one reads the model type, else "
             "`exact (derived)` when the layers derived from transformers (`vramplan/derive/assemble.py`) "
             "reproduce the oracle, else the analytic reader's status.", ""]
    for title, group in (("Model types (the config class's defaults)", defaults), ("Realistic configs", files)):
        if not group:
            continue
        counts = Counter(r.status for r in group)
        auto = Counter(r.auto_status for r in group)
        lines += [f"## {title}", "",
                  f"{len(group)} configs. The analytic tier (no torch): "
                  + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES) + ".", "",
                  "With transformers installed (`--layers-from auto`: the family module where one reads the "
                  "model type, else the layers derived from transformers, else the analytic reader): "
                  + ", ".join(f"{n} {s}" for s, n in sorted(auto.items(), key=lambda kv: -kv[1])) + ".", "",
                  "| config | status | auto | params (oracle) | params (analytic) | error | KV B/token (oracle) | "
                  "KV (analytic) | state (oracle) | state (analytic) | label | cache layers / error |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
        for r in sorted(group, key=lambda r: r.name):
            o, a = r.oracle, r.analytic
            if not o.ok:
                note = o.error
            elif not a.ok:
                note = a.error
            else:
                note = ", ".join(f"{k} {v}" for k, v in sorted(o.cache.items()))
            kv = _n(a.kv_bytes) if a.kv_bytes == o.kv_bytes or a.kv_bytes is None else \
                f"{_n(a.kv_bytes)} ({_pct(r.kv_error)})"
            lines.append(f"| {_cell(r.name)} | {r.status} | {r.auto_status} | {_n(o.params)} | {_n(a.params)} | "
                         f"{_pct(r.params_error)} | {_n(o.kv_bytes)} | {kv} | {_n(o.state_elems) if o.state_elems else ''} | "
                         f"{_n(a.state_elems) if a.state_elems else ''} | {a.label} | {_cell(note)} |")
        lines.append("")
    return "\n".join(lines)


def versions() -> dict:
    from importlib import metadata

    return {name: metadata.version(name) for name in ("transformers", "torch")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", default="", help="comma-separated model types (default: all)")
    ap.add_argument("--configs-only", action="store_true", help="only the realistic config files")
    ap.add_argument("--no-configs", action="store_true", help="only the model types' defaults")
    ap.add_argument("--json", action="store_true", help="rows as JSON on stdout")
    ap.add_argument("--limit", type=float, default=120.0, help="seconds per config (default 120)")
    ap.add_argument("--md", default=None, help="write the markdown table here (default: docs/coverage.md "
                    "for the full sweep, nowhere otherwise)")
    ap.add_argument("--in-process", action="store_true", help="run every config in this process (no "
                    "worker: faster for a few types, but a crash in a model's code ends the run)")
    ap.add_argument("--merge", default=None, help="rows of an earlier --json output: kept where this run "
                    "does not redo them (to refresh a few rows of docs/coverage.md)")
    ap.add_argument("--render", default=None, help="only write the markdown from an earlier --json output")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        return worker(args.limit)
    if args.render:
        rows = [oracle.row_from_json(d) for d in json.loads(Path(args.render).read_text())]
        md = args.md or str(ROOT / "docs" / "coverage.md")
        Path(md).write_text(markdown(rows, versions(), 0.0) + "\n")
        print(f"wrote {md}", file=sys.stderr)
        return 0
    start = time.perf_counter()
    types = [t.strip() for t in args.types.split(",") if t.strip()] if args.types else None
    jobs: list[tuple[str, str]] = []
    if not args.configs_only:
        jobs += [("defaults", mt) for mt in (types if types is not None else oracle.generation_types())]
    if not args.no_configs:
        for name, path in realistic_configs():
            if types is not None and not args.configs_only:
                mt = json.loads(path.read_text()).get("model_type")
                if mt not in types:
                    continue
            jobs.append(("file", str(path)))

    def say(row: oracle.Row) -> None:
        print(f"{row.status:22} {row.auto_status:18} {row.name:40} {row.seconds:5.1f}s", file=sys.stderr, flush=True)

    if args.in_process:
        rows = []
        for job in jobs:
            rows.append(run_job(job, args.limit))
            say(rows[-1])
    else:
        rows = run_isolated(jobs, args.limit, say)
    seconds = time.perf_counter() - start
    if args.merge:
        done = {(r.source, r.name) for r in rows}
        earlier = [oracle.row_from_json(d) for d in json.loads(Path(args.merge).read_text())]
        rows = [r for r in earlier if (r.source, r.name) not in done] + rows
    if args.json:
        json.dump([r.to_json() for r in rows], sys.stdout, indent=1)
        print()
    else:
        counts = Counter(r.status for r in rows)
        print(f"{len(rows)} configs: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES))
        auto = Counter(r.auto_status for r in rows)
        print("with transformers (--layers-from auto): " + ", ".join(f"{n} {s}" for s, n in auto.most_common()))
    md = args.md or (str(ROOT / "docs" / "coverage.md") if (types is None and not args.configs_only
                     and not args.no_configs) or args.merge else None)
    if md:
        Path(md).write_text(markdown(rows, versions(), seconds) + "\n")
        print(f"wrote {md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
