"""Benchmark: the same 8 defense runs in process (sequential) and on a local Ray with 2 workers.

    .venv/bin/python scripts/bench_ray.py [--entry word-cf] [--method fine-tuning] [--runs 8] [--limit 200] [--out FILE]

Prints (and writes to --out) one markdown table: wall time of each executor, the runs' own defense seconds, Ray's start
time, the bytes shipped through the object store, and the overhead per task (wall × workers / runs − a run's own
seconds) as a ratio to a run's own time. Each executor writes into its own empty results database, so nothing is reused.
Needs the zoo entry built (`finemix zoo build --only clean,word-cf`) and Ray (`pip install 'finemix[ray]'`).
Run it alone: two torch jobs sharing 2 cores thrash.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from finemix_core.atomic import write_bytes
from finemix_core.config import finemix_home
from finemix_core.defenses import DefenseConfig
from finemix_core.executor import ContextCache, RunSpec, SequentialExecutor, execute


def one_executor(label: str, specs: list[RunSpec], executor, zoo: Path) -> dict:
    with tempfile.TemporaryDirectory() as home:
        (Path(home) / "zoo").symlink_to(zoo)
        os.environ["FINEMIX_HOME"] = home
        started = time.perf_counter()
        _, rows, stats = execute(specs, ContextCache("cpu"), executor, "report", resume=False, log=lambda m: None)
        wall = time.perf_counter() - started
    if stats.failed:
        raise SystemExit(f"{label}: {stats.failed[0].spec.label}: {stats.failed[0].error}")
    own = [r["seconds"] for r in rows.values()]
    return {"label": label, "wall": wall, "own": own, "stats": stats, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entry", default="word-cf")
    ap.add_argument("--method", default="fine-tuning")
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--limit", type=int, default=200, help="test examples scored per run")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import ray

    from finemix_core.ray_executor import RayExecutor

    zoo = finemix_home() / "zoo"
    specs = [RunSpec(args.entry, DefenseConfig(method=args.method, seed=s), 128, "default", args.limit) for s in range(args.runs)]
    results = [one_executor(f"sequential ({torch.get_num_threads()} torch threads)", specs, SequentialExecutor(), zoo)]
    for ship in ("path", "object-store"):
        t0 = time.perf_counter()
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address="local", num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        start = time.perf_counter() - t0
        try:
            res = one_executor(f"Ray, {args.workers} workers × 1 thread, ship={ship}", specs, RayExecutor("auto", ship=ship), zoo)
        finally:
            ray.shutdown()
        res["start"] = start
        results.append(res)

    base = results[0]
    same = all(
        {k: (r["cacc"], r["asr"]) for k, r in base["rows"].items()} == {k: (r["cacc"], r["asr"]) for k, r in res["rows"].items()}
        for res in results[1:]
    )
    lines = [
        f"# Sequential vs Ray: {args.runs} × `{args.method}` on `{args.entry}` ({args.limit} test examples each)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, "
        f"ray {ray.__version__}; each executor on an empty results database (nothing reused); seeds 0–{args.runs - 1}; "
        f"metrics identical across executors: {'yes' if same else 'NO'}.",
        "",
        "| executor | wall s | speed-up | run's own s (mean) | overhead per task s | overhead / own | Ray start s | "
        "shipped MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for res in results:
        own = statistics.mean(res["own"])
        workers = 1 if res is base else args.workers
        per_task = res["wall"] * workers / args.runs - own  # what a run costs beyond its own defense: load, score, schedule, ship
        lines.append(
            f"| {res['label']} | {res['wall']:.0f} | {base['wall'] / res['wall']:.2f}× | {own:.1f} | {per_task:.1f} | "
            f"{per_task / own:.2f} | "
            f"{res.get('start', 0):.1f} | {res['stats'].shipped_bytes / 2**20:.1f} |"
        )
    lines += [
        "",
        "Overhead per task = wall × workers / runs − the run's own defense seconds: loading θ_PT/θ_FT/data (once per "
        "process), scoring the test set, scheduling and (object-store) unpacking. A run's own seconds are measured inside it; "
        "Ray's workers use 1 torch thread each, the sequential run uses all cores.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        write_bytes(text.encode(), args.out)


if __name__ == "__main__":
    main()
