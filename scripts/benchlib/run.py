"""One target (service or relay) at one load level, end to end.

Start the process, calibrate (or warm up), read idle memory, offer the load while
sampling the process from /proc, then verify every request against the server's own
list of its events, and stop the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from scripts.benchlib import hostspeed, procstat, template, users
from scripts.benchlib.hotspots import Profile, parse_raw
from scripts.benchlib.httpclient import Connection
from scripts.benchlib.load import (
    NETWORK_ERRORS,
    PROMPTS,
    LoadPlan,
    Recorder,
    calibrate,
    loop_lag,
    recorder,
    run_load,
)
from scripts.benchlib.processes import (
    HOST,
    PROFILE_HZ,
    Child,
    get_json_bytes,
    start_host_probe,
    start_profiler,
    start_relay,
    start_service,
    wait_ready,
)
from scripts.benchlib.stats import HistogramWindow, Summary, histogram_window, rate, summarize
from scripts.benchlib.verify import VerifySummary, check_stream, summarize_checks

RSS_PERIOD_S = 0.5
QUIET_CORES = 0.25
"""Other processes may use this much CPU and the machine still counts as quiet."""
VERIFY_CONCURRENCY = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class Level:
    """One load level of a run."""

    streams: int
    pace_ms: float
    duration_s: float
    warmup_s: float
    drain_s: float
    disconnect_fraction: float
    mode: str
    seed: int
    runners: int = 0
    """GENSTREAM_RUNNERS; 0: one per stream."""
    workers: int = 1
    """GENSTREAM_WORKERS: the service's worker processes."""
    quiet_wait_s: float = 0.0
    """Wait up to this long for other processes to go quiet before offering the load."""
    profile: bool = False


@dataclass(slots=True, kw_only=True)
class TargetResult:
    """What one target did at one level."""

    target: str
    streams: int
    pace_ms: float
    runners: int = 0
    workers: int = 1
    warmup_s: float = 0.0
    window_s: float
    offered_per_stream: float
    events_per_generation: float
    events_per_s: float = math.nan
    latency: Summary | None = None
    first_event: Summary | None = None
    first_output: Summary | None = None
    post: Summary | None = None
    admitted_post: Summary | None = None
    """The POSTs answered 200 or 201: the ones that wait for a commit."""
    post_statuses: dict[int, int] = field(default_factory=dict)
    resume: Summary | None = None
    resumes: int = 0
    resumes_nothing_missed: int = 0
    generations: int = 0
    rss_idle_kib: float = math.nan
    rss_load_kib: float = math.nan
    rss_peak_kib: float = math.nan
    open_streams: float = math.nan
    """SSE streams open at once, the median of the samples taken with the RSS."""
    idle_cpu: float = math.nan
    """Server CPU (cores) after the warm-up, before the load."""
    server_cpu: float = math.nan
    server_sys: float = math.nan
    """Of ``server_cpu``, the part spent in the kernel (cores)."""
    server_loop: float = math.nan
    """Of ``server_cpu``, the main thread's (the event loop's; the rest is SQLite threads)."""
    client_cpu: float = math.nan
    machine_busy: float = math.nan
    interrupts: float = math.nan
    """Share of the machine's CPU time in irq/softirq handlers (0..1)."""
    background_cpu: float = math.nan
    """Cores other processes used just before the load (the wait for quiet ended there)."""
    steal: float = math.nan
    """Share of the machine's CPU time the host took back in the window (0..1): busy time
    in /proc/stat, but not another process's (``other_cpu`` leaves it out)."""
    host_probe_ms: list[float] = field(default_factory=list)
    """The host's speed through the window: the CPU time of a fixed piece of interpreter
    work, timed every two seconds (``hostspeed``)."""
    client_lag: Summary | None = None
    events_per_commit: float = math.nan
    write_delay: HistogramWindow | None = None
    """The service's group commits in the window: oldest append's arrival to answer."""
    transaction: HistogramWindow | None = None
    """Their transactions' round trips from the event loop, lock waits included."""
    verify: VerifySummary = field(default_factory=VerifySummary)
    unfinished_slots: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    profile: Profile | None = None

    @property
    def other_cpu(self) -> float:
        """Cores busy with neither server, load generator nor interrupts: other processes."""
        cores = os.cpu_count() or 1
        busy = (self.machine_busy - self.interrupts - self.steal) * cores
        return busy - self.server_cpu - self.client_cpu

    def cpu_us_per_event(self, cores: float) -> float:
        """``cores`` of server CPU per delivered event, in microseconds."""
        return cores / self.events_per_s * 1e6 if self.events_per_s > 0 else math.nan

    @property
    def open_or_nominal(self) -> float:
        """Streams open at once as sampled, or the nominal number if none was sampled."""
        return self.open_streams if self.open_streams > 0 else self.streams

    @property
    def kib_per_stream(self) -> float:
        """Server memory per open stream: (RSS under load - idle RSS) / streams open.

        Divided by the streams sampled open, not the nominal number: a machine that admits
        fewer generations than offered holds fewer streams open."""
        return (self.rss_load_kib - self.rss_idle_kib) / self.open_or_nominal


@dataclass(slots=True)
class _Samples:
    rss: list[int] = field(default_factory=list)
    open_streams: list[int] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    server_cpu: float = math.nan
    server_sys: float = math.nan
    server_loop: float = math.nan
    client_cpu: float = math.nan
    machine_busy: float = math.nan
    interrupts: float = math.nan
    steal: float = math.nan
    events_per_commit: float = math.nan
    write_delay: HistogramWindow | None = None
    transaction: HistogramWindow | None = None


async def _metrics(port: int, workers: int = 1) -> dict[str, float]:
    """The service's metrics; with several workers (each answering for itself), the sum
    over all of them, scraped until each has answered once (or nothing if they do not)."""
    by_worker: dict[str, dict[str, float]] = {}
    for _ in range(20 * workers):
        try:
            status, body = await get_json_bytes(
                port, "/metrics", [users.bearer(users.ADMIN, admin=True)]
            )
        except NETWORK_ERRORS:
            return {}
        if status != 200:
            return {}
        out: dict[str, float] = {}
        for line in body.decode().splitlines():
            name, _, value = line.partition(" ")
            if line and not line.startswith("#"):
                out[name] = float(value)
        worker = next((k for k in out if k.startswith("genstream_worker_info")), "")
        by_worker[worker] = out
        if len(by_worker) >= workers:
            break
    if len(by_worker) < workers:
        return {}
    return {
        name: sum(m.get(name, 0.0) for m in by_worker.values())
        for name in set().union(*by_worker.values())
    }


async def _sleep_until(t: float) -> None:
    await asyncio.sleep(max(0.0, t - time.time()))


async def _monitor(
    pid: int,
    port: int,
    rec: Recorder,
    out: _Samples,
    workers: int = 1,
) -> None:
    """CPU of server, client and machine over the window; RSS and the streams open
    sampled through it."""
    start, end = rec.window_start, rec.window_end
    await _sleep_until(start)
    me = os.getpid()
    server0, client0 = procstat.tree_cpu_times(pid), procstat.cpu_times(me)
    loop0 = procstat.tree_main_thread_cpu_times(pid)
    machine0 = procstat.machine_times()
    metrics0 = await _metrics(port, workers)
    lag = asyncio.create_task(loop_lag(end, out.lags))
    while time.time() < end:
        out.rss.append(procstat.tree_rss_kib(pid))
        out.open_streams.append(rec.open_streams)
        await asyncio.sleep(min(RSS_PERIOD_S, max(0.0, end - time.time())))
    span = time.time() - start
    server1 = procstat.tree_cpu_times(pid)
    out.server_cpu = (server1.total - server0.total) / span
    out.server_sys = (server1.system - server0.system) / span
    out.server_loop = (procstat.tree_main_thread_cpu_times(pid).total - loop0.total) / span
    out.client_cpu = (procstat.cpu_times(me).total - client0.total) / span
    machine1 = procstat.machine_times()
    out.machine_busy = procstat.busy_fraction(machine0, machine1)
    out.interrupts = procstat.interrupt_fraction(machine0, machine1)
    out.steal = procstat.steal_fraction(machine0, machine1)
    metrics1 = await _metrics(port, workers)
    commits = metrics1.get("genstream_log_commits_total", 0) - metrics0.get(
        "genstream_log_commits_total", 0
    )
    events = metrics1.get("genstream_log_events_total", 0) - metrics0.get(
        "genstream_log_events_total", 0
    )
    out.events_per_commit = events / commits if commits else math.nan
    out.write_delay = histogram_window("genstream_log_write_delay_seconds", metrics0, metrics1)
    out.transaction = histogram_window("genstream_log_transaction_seconds", metrics0, metrics1)
    await lag


class _EventHead(msgspec.Struct):
    seq: int
    type: str


class _EventPage(msgspec.Struct):
    events: list[_EventHead]
    terminal: bool = False


async def verify(
    port: int,
    received: dict[str, list[tuple[int, str]]],
    wait_s: float,
    owners: dict[str, str],
) -> VerifySummary:
    """Fetch every request's events from the server (as the user who created each one)
    and check what the client received."""
    decoder = msgspec.json.Decoder(_EventPage)
    pending = list(received)
    checks = []
    deadline = time.monotonic() + wait_s

    async def fetch(conn: Connection, request_id: str) -> list[tuple[int, str]]:
        stored: list[tuple[int, str]] = []
        while True:
            # Requests cut short by the drain deadline may still be running: wait for them.
            path = f"/assistant/requests/{request_id}/events?after={len(stored)}&limit=1000"
            head, body = await conn.request("GET", path, [users.bearer(owners[request_id])])
            if head.status != 200:
                raise RuntimeError(f"GET {path}: {head.status} {body[:200]!r}")
            page = decoder.decode(body)
            stored += [(e.seq, e.type) for e in page.events]
            if page.terminal or (not page.events and time.monotonic() > deadline):
                return stored
            if not page.events:
                await asyncio.sleep(0.5)

    async def worker() -> None:
        conn = await Connection.open(HOST, port)
        try:
            while pending:
                request_id = pending.pop()
                stored = await fetch(conn, request_id)
                checks.append(check_stream(request_id, received[request_id], stored))
        finally:
            conn.abort()

    await asyncio.gather(*(worker() for _ in range(VERIFY_CONCURRENCY)))
    return summarize_checks(checks, events=sum(len(r) for r in received.values()))


def _fill(result: TargetResult, rec: Recorder, samples: _Samples, rss_idle: float) -> None:
    result.events_per_s = rate(rec.events, result.window_s)
    result.latency = summarize(rec.latencies_ms)
    result.first_event = summarize(rec.first_event_ms)
    result.first_output = summarize(rec.first_output_ms)
    result.post = summarize(rec.post_ms)
    result.admitted_post = summarize(rec.admitted_post_ms)
    result.post_statuses = dict(sorted(rec.post_statuses.items()))
    result.resume = summarize(rec.resume_ms)
    result.resumes = rec.resumes
    result.resumes_nothing_missed = rec.resumes_nothing_missed
    result.generations = rec.generations
    result.rss_idle_kib = rss_idle
    result.rss_load_kib = statistics.median(samples.rss) if samples.rss else math.nan
    result.rss_peak_kib = max(samples.rss, default=math.nan)
    if samples.open_streams:
        result.open_streams = statistics.median(samples.open_streams)
    result.server_cpu = samples.server_cpu
    result.server_sys = samples.server_sys
    result.server_loop = samples.server_loop
    result.client_cpu = samples.client_cpu
    result.machine_busy = samples.machine_busy
    result.interrupts = samples.interrupts
    result.steal = samples.steal
    result.client_lag = summarize(samples.lags)
    result.events_per_commit = samples.events_per_commit
    result.write_delay = samples.write_delay
    result.transaction = samples.transaction
    result.errors = dict(rec.errors.most_common())


async def rss_and_cpu(pid: int, seconds: float = 2.0) -> tuple[float, float]:
    """Median RSS (KiB) and CPU (cores) of ``pid`` and its descendants over ``seconds``."""
    values = []
    before, started = procstat.tree_cpu_times(pid), time.monotonic()
    for _ in range(4):
        await asyncio.sleep(seconds / 4)
        values.append(procstat.tree_rss_kib(pid))
    cores = (procstat.tree_cpu_times(pid).total - before.total) / (time.monotonic() - started)
    return float(statistics.median(values)), cores


async def background_cores(pid: int, seconds: float = 3.0) -> float:
    """Cores used over ``seconds`` by processes other than ``pid`` and this one."""
    me = os.getpid()
    m0, s0, c0 = procstat.machine_times(), procstat.tree_cpu_times(pid), procstat.cpu_times(me)
    started = time.monotonic()
    await asyncio.sleep(seconds)
    m1, s1, c1 = procstat.machine_times(), procstat.tree_cpu_times(pid), procstat.cpu_times(me)
    span = time.monotonic() - started
    cores = os.cpu_count() or 1
    busy = (
        procstat.busy_fraction(m0, m1)
        - procstat.interrupt_fraction(m0, m1)
        - procstat.steal_fraction(m0, m1)
    ) * cores
    return busy - (s1.total - s0.total) / span - (c1.total - c0.total) / span


async def wait_for_quiet(pid: int, max_wait_s: float, log: Callable[[str], None]) -> float:
    """Wait (at most ``max_wait_s``) until other processes leave the cores alone."""
    deadline = time.monotonic() + max_wait_s
    busy = await background_cores(pid)
    if busy > QUIET_CORES and max_wait_s > 0:
        log(f"    other processes use {busy:.2f} cores: waiting up to {max_wait_s:g} s")
        while busy > QUIET_CORES and time.monotonic() < deadline:
            busy = await background_cores(pid)
    return busy


async def _host_figures(probe: Child) -> list[float]:
    """What the host probe timed (it ends with the window: one at its last figure yet after
    30 s more is stopped there)."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        await asyncio.to_thread(probe.popen.wait, 30)
    await asyncio.to_thread(probe.stop)
    return hostspeed.read_figures(await asyncio.to_thread(probe.log_path.read_text))


def _stop(child: Child, log: Callable[[str], None]) -> None:
    code = child.stop()
    # uvicorn re-raises the SIGTERM it handled once it has shut down: -15 is a clean exit.
    if code not in (0, None, -signal.SIGTERM):
        log(f"    ({child.name} exited with code {code}; log: {child.log_path})")


async def record_scripts(
    level: Level, workdir: Path, scripts_path: Path, log: Callable[[str], None] = print
) -> dict[str, list[template.Batch]]:
    """What the demo offers at this pace, unloaded: one generation per prompt on a service
    with a runner per prompt; written to ``scripts_path`` for the relay to replay."""
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    child, port = start_service(workdir, level.pace_ms, len(PROMPTS))
    try:
        await wait_ready(child, port)
        traces = await calibrate(HOST, port, level.mode)
    finally:
        _stop(child, log)
    scripts = {prompt: template.batches(trace) for prompt, trace in traces.items()}
    await asyncio.to_thread(scripts_path.write_bytes, template.encode_scripts(scripts))
    return scripts


async def run_target(
    target: str,
    level: Level,
    workdir: Path,
    scripts: dict[str, list[template.Batch]],
    scripts_path: Path,
    log: Callable[[str], None] = print,
) -> TargetResult:
    """Run ``level`` against ``target`` (``service`` or ``relay``)."""
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    child: Child
    if target == "service":
        child, port = start_service(
            workdir, level.pace_ms, level.runners or level.streams, level.workers
        )
    else:
        child, port = start_relay(workdir, scripts_path)
    profiler: Child | None = None
    probe: Child | None = None
    tasks: list[asyncio.Task[Any]] = []
    try:
        await wait_ready(child, port)
        await calibrate(HOST, port, level.mode)  # warm-up: lazy imports, statement caches
        rss_idle, cpu_idle = await rss_and_cpu(child.pid)
        per_stream = statistics.mean(template.events_per_second(s) for s in scripts.values())
        per_generation = statistics.mean(template.event_count(s) for s in scripts.values())
        span = max(script[-1][0] for script in scripts.values())
        plan = LoadPlan(
            host=HOST,
            port=port,
            streams=level.streams,
            mode=level.mode,
            warmup_s=level.warmup_s,
            duration_s=level.duration_s,
            drain_s=max(level.drain_s, 2 * span + 2),
            disconnect_fraction=level.disconnect_fraction,
            seed=level.seed,
        )
        result = TargetResult(
            target=target,
            streams=level.streams,
            pace_ms=level.pace_ms,
            runners=(level.runners or level.streams) if target == "service" else 0,
            workers=level.workers if target == "service" else 1,
            warmup_s=level.warmup_s,
            window_s=level.duration_s,
            offered_per_stream=per_stream,
            events_per_generation=per_generation,
            idle_cpu=cpu_idle,
        )
        result.background_cpu = await wait_for_quiet(child.pid, level.quiet_wait_s, log)
        started = time.time() + 0.2
        window_start = started + level.warmup_s
        samples = _Samples()
        rec = recorder(plan, started)
        monitor = asyncio.create_task(_monitor(child.pid, port, rec, samples, level.workers))
        load = asyncio.create_task(run_load(plan, started, rec))
        probe_out = workdir / f"{target}-{level.streams}-host-probe.txt"
        probe = start_host_probe(window_start, window_start + level.duration_s, probe_out)
        tasks += [monitor, load]
        profile_out = workdir / "py-spy.txt"
        if level.profile and target == "service":
            await _sleep_until(window_start)
            profiler = start_profiler(
                child.pid, level.duration_s, profile_out, subprocesses=level.workers > 1
            )
        result.unfinished_slots = await load
        await monitor
        _fill(result, rec, samples, rss_idle)
        result.host_probe_ms = await _host_figures(probe)
        if profiler is not None:
            await asyncio.to_thread(profiler.popen.wait, 60)
            if profile_out.exists():
                result.profile = parse_raw(profile_out.read_text().splitlines())
                result.profile.expected = round(PROFILE_HZ * level.duration_s)
        if not child.running():
            raise RuntimeError(f"{target} died during the run:\n{child.tail()}")
        result.verify = await verify(port, rec.received, wait_s=2 * span + 10, owners=rec.owners)
        return result
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if probe is not None:
            probe.stop()
        if profiler is not None:
            profiler.stop()
        _stop(child, log)
