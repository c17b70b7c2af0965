"""``scripts/bench``: the service against a non-durable relay, at one or more load levels.

Examples::

    scripts/bench                                  # 100 streams, 15 s: about a minute
    scripts/bench --streams 300 --duration 20 --pace-ms 20
    scripts/bench --sweep 100,300,1000 --duration 20 --output docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from scripts.benchlib import report
from scripts.benchlib.processes import ROOT, stop_all
from scripts.benchlib.run import Level, TargetResult, record_scripts, run_target
from scripts.benchlib.stats import format_number, format_ratio, ratio

MAX_STREAMS = 5_000
_T = TypeVar("_T")
MAX_DURATION_S = 600.0


def default_pace_ms(streams: int) -> float:
    """DESIGN section 8's offered loads: ~20 events/s per stream, 5 at 1,000 streams."""
    return 20.0 if streams < 1000 else 200.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmark genstream against a non-durable in-memory SSE relay.",
    )
    parser.add_argument("--streams", type=int, default=100, help="concurrent generations")
    parser.add_argument("--sweep", help="comma-separated stream counts (overrides --streams)")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--drain", type=float, default=10.0, help="max seconds to finish streams")
    parser.add_argument(
        "--pace-ms",
        help="demo delay between tokens: one value, or one per sweep level "
        "(default 20 below 1,000 streams, 200 from 1,000: ~20 and ~5 events/s per stream)",
    )
    parser.add_argument("--mode", default="chat", choices=["chat", "generate"])
    parser.add_argument(
        "--disconnect", type=float, default=0.1, help="fraction of streams dropped and resumed"
    )
    parser.add_argument(
        "--runners", type=int, default=0, help="GENSTREAM_RUNNERS (default: one per stream)"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="GENSTREAM_WORKERS: service processes"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="seconds to wait, before each run, for other processes to leave the cores idle",
    )
    parser.add_argument("--target", choices=["both", "service"], default="both")
    parser.add_argument("--profile", action="store_true", help="py-spy the service in the window")
    parser.add_argument("--output", type=Path, help="markdown report to write (a sweep: docs/)")
    parser.add_argument("--plot", type=Path, help="PNG to write (default: next to --output)")
    parser.add_argument("--json", type=Path, help="raw results as JSON")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, db)")
    args = parser.parse_args(argv)
    levels = [int(s) for s in args.sweep.split(",")] if args.sweep else [args.streams]
    if any(not 1 <= n <= MAX_STREAMS for n in levels):
        parser.error(f"streams must be between 1 and {MAX_STREAMS}")
    if not 1 <= args.duration <= MAX_DURATION_S or args.warmup < 0 or args.drain < 0:
        parser.error(f"duration must be 1..{MAX_DURATION_S:g} s; warmup and drain >= 0")
    if not 0 <= args.quiet_wait <= MAX_DURATION_S:
        parser.error(f"--quiet-wait must be 0..{MAX_DURATION_S:g} s")
    if not 1 <= args.workers <= 16:
        parser.error("--workers must be 1..16")
    if args.runners < 0:
        parser.error("--runners must be positive (0: one per stream)")
    if not 0 <= args.disconnect <= 1:
        parser.error("--disconnect is a fraction between 0 and 1")
    paces = [float(p) for p in args.pace_ms.split(",")] if args.pace_ms else []
    if len(paces) not in (0, 1, len(levels)) or any(p < 0 for p in paces):
        parser.error("--pace-ms takes one value, or one per sweep level")
    args.levels = [
        Level(
            streams=n,
            pace_ms=(paces[i] if len(paces) > 1 else paces[0]) if paces else default_pace_ms(n),
            duration_s=args.duration,
            warmup_s=args.warmup,
            drain_s=args.drain,
            disconnect_fraction=args.disconnect,
            mode=args.mode,
            seed=args.seed,
            runners=args.runners,
            workers=args.workers,
            quiet_wait_s=args.quiet_wait,
            profile=args.profile,
        )
        for i, n in enumerate(levels)
    ]
    if args.output is None and args.sweep:
        args.output = ROOT / "docs" / "benchmarks.md"
    if args.plot is None and args.output is not None and args.sweep:
        args.plot = args.output.with_suffix(".png")
    return args


def machine_notes() -> str:
    """Cores, CPU model, memory, OS, Python, commit: what a reader needs to compare."""
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_gib = int(f.readline().split()[1]) / 1024 / 1024
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--", "app", "migrations"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if commit and changed:
            commit += " plus uncommitted changes to app/"
    except OSError:
        commit = ""
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    return (
        f"{os.cpu_count()} cores ({model}), {mem_gib:.0f} GiB, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, client loop {loop}"
        + (f", commit {commit}" if commit else "")
        + ". The load generator runs on the same cores as the server."
    )


def one_line(result: TargetResult) -> str:
    lat = result.latency
    post = result.post
    return (
        f"  {result.target:7} {format_number(result.events_per_s, 0):>7} ev/s  "
        f"p50/p99 {format_number(lat.p50 if lat else math.nan)}/"
        f"{format_number(lat.p99 if lat else math.nan)} ms  "
        f"POST p99 {format_number(post.p99 if post else math.nan)} ms  "
        f"cpu srv {result.server_cpu:.2f} cli {result.client_cpu:.2f}  "
        f"verify {result.verify.complete}+{result.verify.partial} ok, "
        f"{result.verify.failed} failed"
    )


async def bench(
    args: argparse.Namespace, workdir: Path
) -> list[tuple[TargetResult, TargetResult | None]]:
    results: list[tuple[TargetResult, TargetResult | None]] = []
    for level in args.levels:
        print(f"==> {level.streams} streams, pace {level.pace_ms:g} ms, {level.duration_s:g} s")
        base = workdir / f"streams-{level.streams}"
        scripts_path = base / "relay-scripts.json"
        scripts = await record_scripts(level, base / "calibration", scripts_path)
        service = await run_target("service", level, base / "service", scripts, scripts_path)
        print(one_line(service), flush=True)
        relay = None
        if args.target == "both":
            relay = await run_target("relay", level, base / "relay", scripts, scripts_path)
            print(one_line(relay), flush=True)
            p99 = ratio(
                service.latency.p99 if service.latency else None,
                relay.latency.p99 if relay.latency else None,
            )
            events = ratio(service.events_per_s, relay.events_per_s)
            print(f"  service/relay: events/s {format_ratio(events)}, p99 {format_ratio(p99)}")
        results.append((service, relay))
    return results


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, _T]], _T]:
    """uvloop's ``run`` when installed (a cheaper client), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["scripts/bench", *(sys.argv[1:] if argv is None else argv)])
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, _terminate)
    workdir = Path(tempfile.mkdtemp(prefix="genstream-bench-"))
    failed = True
    try:
        results = _event_loop_runner()(bench(args, workdir))
        failed = False
    except KeyboardInterrupt:
        failed = False
        print("interrupted: stopping every process started", file=sys.stderr)
        return 130
    finally:
        stop_all()
        if failed or args.keep:
            print(f"work directory kept (logs, databases): {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    block = report.generated_block(results, command, machine_notes())
    if args.output is not None:
        report.write_markdown(args.output, block)
        print(f"wrote {args.output}")
    else:
        print(block)
    if args.plot is not None:
        if report.write_plot(args.plot, results):
            print(f"wrote {args.plot}")
        else:
            print("matplotlib is not installed: no PNG written", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(
            json.dumps([[asdict(s), asdict(r) if r else None] for s, r in results], default=str)
        )
    lost = any(not s.verify.ok or (r is not None and not r.verify.ok) for s, r in results)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
