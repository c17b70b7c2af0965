"""The benchmark harness's pure parts: statistics, stream verification, parsing, report."""

from __future__ import annotations

import math
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from app.api.auth import Principal, read_token
from scripts.benchlib import (
    hostspeed,
    hotspots,
    processes,
    procstat,
    report,
    run,
    sse,
    stats,
    template,
    users,
    verify,
)
from scripts.benchlib.httpclient import ProtocolError, parse_head, request_bytes
from scripts.benchlib.load import Recorder
from scripts.benchlib.run import TargetResult
from scripts.benchlib.stats import Summary

# --- statistics -------------------------------------------------------------------------


def test_percentile_interpolates_between_ranks() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert stats.percentile(values, 0) == 1.0
    assert stats.percentile(values, 50) == 2.5
    assert stats.percentile(values, 100) == 4.0
    assert stats.percentile(values, 99) == pytest.approx(3.97)


def test_percentile_of_one_value_is_that_value() -> None:
    assert stats.percentile([7.0], 99) == 7.0


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(stats.percentile([], 50))


def test_percentile_rejects_a_rank_outside_0_to_100() -> None:
    with pytest.raises(ValueError, match="outside"):
        stats.percentile([1.0], 101)


def test_summarize_sorts_and_reports_the_tail() -> None:
    summary = stats.summarize([float(v) for v in range(100, 0, -1)])
    assert summary.n == 100
    assert summary.p50 == pytest.approx(50.5)
    assert summary.p99 == pytest.approx(99.01)
    assert summary.max == 100.0
    assert summary.mean == pytest.approx(50.5)


def test_a_histogram_window_is_the_difference_of_two_scrapes() -> None:
    name = "genstream_log_write_delay_seconds"

    def scrape(fast: float, slow: float, count: float, total: float) -> dict[str, float]:
        buckets = {"0.01": fast, "0.05": slow, "+Inf": count}
        return {f'{name}_bucket{{le="{le}"}}': n for le, n in buckets.items()} | {
            f"{name}_count": count,
            f"{name}_sum": total,
        }

    before, after = scrape(5, 6, 6, 0.05), scrape(95, 105, 106, 0.85)
    window = stats.histogram_window(name, before, after)
    assert window is not None
    assert window.count == 100 and window.mean == pytest.approx(0.008)
    assert window.buckets == ((0.01, 90.0), (0.05, 99.0), (math.inf, 100.0))
    assert window.quantile_bound(0.5) == 0.01
    assert window.quantile_bound(0.99) == 0.05
    assert window.quantile_bound(1.0) == math.inf
    empty = stats.histogram_window(name, after, after)
    assert empty is not None
    assert math.isnan(empty.mean) and math.isnan(empty.quantile_bound(0.99))
    assert stats.histogram_window(name, before, {}) is None


def test_summarize_of_nothing_has_no_figures() -> None:
    summary = stats.summarize([])
    assert summary.n == 0
    assert math.isnan(summary.p99)


@pytest.mark.parametrize(
    ("numerator", "denominator", "shown"),
    [
        (150.0, 100.0, "1.50x"),
        (1.0, 3.0, "0.33x"),
        (1.0, 0.0, "n/a"),
        (None, 1.0, "n/a"),
        (math.nan, 1.0, "n/a"),
    ],
)
def test_ratio_formatting(numerator: float | None, denominator: float, shown: str) -> None:
    assert stats.format_ratio(stats.ratio(numerator, denominator)) == shown


def test_format_number_separates_thousands_and_says_na() -> None:
    assert stats.format_number(12345.678, 1) == "12,345.7"
    assert stats.format_number(math.nan) == "n/a"
    assert stats.format_number(None) == "n/a"


def test_rate_over_an_empty_interval_is_nan() -> None:
    assert stats.rate(10, 2.0) == 5.0
    assert math.isnan(stats.rate(10, 0.0))


# --- stream verification ----------------------------------------------------------------

STORED = [(1, "created"), (2, "status"), (3, "response_chunk"), (4, "complete")]


def test_a_stream_received_whole_is_clean() -> None:
    check = verify.check_stream("r", STORED, STORED)
    assert check.ok
    assert check.complete


def test_a_stream_cut_before_its_end_is_a_clean_prefix() -> None:
    check = verify.check_stream("r", STORED[:2], STORED)
    assert check.ok
    assert not check.complete


def test_a_duplicated_event_is_reported() -> None:
    received = [*STORED[:3], (3, "response_chunk"), STORED[3]]
    check = verify.check_stream("r", received, STORED)
    assert not check.ok
    assert any("duplicated seq 3" in p for p in check.problems)


def test_a_lost_event_is_reported() -> None:
    received = [STORED[0], STORED[1], STORED[3]]
    check = verify.check_stream("r", received, STORED)
    assert any("lost seq 3" in p for p in check.problems)


def test_a_gap_in_a_prefix_is_a_loss() -> None:
    check = verify.check_stream("r", [STORED[0], STORED[2]], STORED)
    assert any("lost seq 2" in p for p in check.problems)


def test_out_of_order_and_mistyped_events_are_reported() -> None:
    received = [STORED[1], STORED[0]]
    assert any("increasing" in p for p in verify.check_stream("r", received, STORED).problems)
    mistyped = [STORED[0], (2, "stage")]
    problems = verify.check_stream("r", mistyped, STORED).problems
    assert any("type differs" in p for p in problems)


def test_an_event_the_log_does_not_have_is_reported() -> None:
    received = [*STORED, (5, "complete")]
    problems = verify.check_stream("r", received, STORED).problems
    assert any("not in the log" in p for p in problems)


@pytest.mark.parametrize(
    ("stored", "problem"),
    [
        ([], "no events"),
        ([(1, "created"), (3, "complete")], "stored seq 3 where 2"),
        ([(1, "status"), (2, "complete")], "not created"),
        ([(1, "created"), (2, "status")], "0 terminal"),
        ([(1, "created"), (2, "complete"), (3, "error")], "2 terminal"),
        ([(1, "created"), (2, "complete"), (3, "stage")], "after the terminal"),
    ],
)
def test_stored_invariants(stored: list[tuple[int, str]], problem: str) -> None:
    assert any(problem in p for p in verify.stored_problems(stored))


def test_summary_counts_complete_partial_and_failed() -> None:
    checks = [
        verify.check_stream("a", STORED, STORED),
        verify.check_stream("b", STORED[:1], STORED),
        verify.check_stream("c", STORED[1:], STORED),
    ]
    summary = verify.summarize_checks(checks, events=8)
    assert (summary.requests, summary.complete, summary.partial, summary.failed) == (3, 1, 1, 1)
    assert not summary.ok
    assert summary.examples[0].startswith("c: ")


# --- SSE and HTTP parsing ---------------------------------------------------------------


def test_frames_are_parsed_and_the_incomplete_rest_kept() -> None:
    raw = (
        b"retry: 2000\n\n: ping\n\n"
        b'id: 1\nevent: created\ndata: {"seq":1}\n\n'
        b"id: 2\nevent: status\ndata: {"
    )
    frames, rest = sse.parse_frames(raw)
    assert frames == [sse.Frame(1, "created", b'{"seq":1}')]
    assert rest == b"id: 2\nevent: status\ndata: {"
    more, rest = sse.parse_frames(rest + b"}\n\n")
    assert more == [sse.Frame(2, "status", b"{}")]
    assert rest == b""


def test_frames_with_crlf_and_no_space_after_the_colon() -> None:
    frames, _ = sse.parse_frames(b"id:3\r\nevent:stage\r\ndata:x\r\n\r\n")
    assert frames == [sse.Frame(3, "stage", b"x")]


def test_event_at_reads_the_envelope_timestamp() -> None:
    data = b'{"request_id":"r","seq":1,"type":"created","at":"2026-01-02T03:04:05.678901Z","x":1}'
    expected = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC).timestamp()
    assert sse.event_at(data) == pytest.approx(expected)
    assert math.isnan(sse.event_at(b"{}"))


def test_response_head_parsing() -> None:
    head = parse_head(b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nRetry-After: 1\r\n\r\n")
    assert head.status == 201
    assert head.headers == {"content-length": "5", "retry-after": "1"}
    with pytest.raises(ProtocolError):
        parse_head(b"SMTP ready\r\n\r\n")


def test_request_bytes_carry_host_headers_and_length() -> None:
    raw = request_bytes("POST", "/x", "127.0.0.1:1", [("A", "b")], b"{}")
    assert raw == b"POST /x HTTP/1.1\r\nHost: 127.0.0.1:1\r\nA: b\r\nContent-Length: 2\r\n\r\n{}"


# --- /proc parsing ----------------------------------------------------------------------


def test_cpu_times_from_proc_stat_with_a_tricky_name() -> None:
    fields = ["S"] + ["0"] * 10 + [str(3 * procstat.CLOCK_TICKS), str(procstat.CLOCK_TICKS)]
    stat = "42 (py (thon) x) " + " ".join(fields + ["0"] * 30)
    times = procstat.parse_cpu_times(stat)
    assert (times.user, times.system, times.total) == (3.0, 1.0, 4.0)


def test_rss_from_proc_status() -> None:
    assert procstat.parse_rss_kib("Name:\tpython\nVmRSS:\t  12345 kB\n") == 12345
    with pytest.raises(ValueError, match="VmRSS"):
        procstat.parse_rss_kib("Name:\tzombie\n")


def test_machine_busy_fraction() -> None:
    before = procstat.parse_machine_times("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n")
    after = procstat.parse_machine_times("cpu  200 0 200 800 100 0 0 0 0 0\n")
    assert before == procstat.MachineTimes(200, 1000)
    assert procstat.busy_fraction(before, after) == pytest.approx(200 / 300)


def test_interrupt_time_is_irq_plus_softirq() -> None:
    before = procstat.parse_machine_times("cpu  0 0 0 100 0 10 20 0\n")
    after = procstat.parse_machine_times("cpu  0 0 0 170 0 20 40 0\n")
    assert before.interrupts == 30
    assert procstat.interrupt_fraction(before, after) == pytest.approx(30 / 100)


def test_steal_is_read_apart_and_is_not_another_process() -> None:
    # user nice system idle iowait irq softirq steal
    before = procstat.parse_machine_times("cpu  100 0 0 300 0 0 0 0\n")
    after = procstat.parse_machine_times("cpu  200 0 0 400 0 0 0 100\n")
    assert (before.steal, after.steal) == (0, 100)
    assert procstat.steal_fraction(before, after) == pytest.approx(100 / 300)
    assert procstat.parse_machine_times("cpu  1 2 3 4 5 6 7\n").steal == 0  # (no column)
    result = _result("service", 1000, 10)
    result.machine_busy, result.interrupts, result.steal = 0.9, 0.0, 0.4
    result.server_cpu, result.client_cpu = 0.6, 0.2
    cores = os.cpu_count() or 1
    assert result.other_cpu == pytest.approx((0.9 - 0.4) * cores - 0.8)


def test_the_report_gives_the_hosts_steal_and_speed_for_each_target() -> None:
    service, relay = _result("service", 2000, 30), _result("relay", 2500, 15)
    service.steal, service.host_probe_ms = 0.05, [97.6, 43.2, 51.0]
    relay.steal = 0.0
    row = next(r for r in report.level_table(service, relay) if r.startswith("| host:"))
    assert f"| {0.05 * report.CORES:.2f} / 51 (43-98) | 0.00 / n/a |" in row


def test_the_host_probe_counts_cpu_time_not_waiting() -> None:
    assert hostspeed.cpu_ms(lambda: time.sleep(0.05)) < 10
    assert hostspeed.cpu_ms(hostspeed.interpreter_work) > 0
    assert hostspeed.read_figures("43.10\n44.02\n4") == [43.1, 44.02]  # (4 was cut short)
    assert hostspeed.read_figures("43.10\n\nnot a figure\n") == [43.1]


def test_the_host_probe_runs_in_the_background_now_and_then(tmp_path: Path) -> None:
    (tmp_path / "probe.txt").write_text("-1.0\n")  # (a probe of an earlier run)
    now = time.time()
    probe = processes.start_host_probe(now, now + 0.5, tmp_path / "probe.txt")
    try:
        # (Popen returns once the child has run its preexec and started the program)
        assert os.getpriority(os.PRIO_PROCESS, probe.pid) == 19
        assert os.getsid(probe.pid) == os.getsid(0)
        assert probe.popen.wait(60) == 0
    finally:
        probe.stop()
    figures = hostspeed.read_figures((tmp_path / "probe.txt").read_text())
    # One timing in half a second: it pauses for seconds between two, so as to leave the
    # run alone; and the earlier run's figure is gone.
    assert len(figures) == 1 and figures[0] > 0


# --- relay scripts ----------------------------------------------------------------------


def _envelope(seq: int, type_: str, at: str, payload: str = "") -> bytes:
    head = f'{{"request_id":"r","seq":{seq},"type":"{type_}","at":"{at}"'
    return (head + ("," + payload if payload else "") + "}").encode()


def test_a_trace_becomes_batches_of_payloads_at_offsets() -> None:
    trace = [
        (10.0, "created", _envelope(1, "created", "t0", '"mode":"chat"')),
        (10.0, "status", _envelope(2, "status", "t0", '"status":"queued"')),
        (10.5, "response_chunk", _envelope(3, "response_chunk", "t1", '"delta":"hi"')),
        (11.0, "complete", _envelope(4, "complete", "t2")),
    ]
    script = template.batches(trace)
    assert [offset for offset, _ in script] == [0.0, 0.5, 1.0]
    assert script[0][1] == [("created", b'{"mode":"chat"}'), ("status", b'{"status":"queued"}')]
    assert script[2][1] == [("complete", b"{}")]
    assert template.event_count(script) == 4
    assert template.events_per_second(script) == 4.0
    assert template.decode_scripts(template.encode_scripts({"p": script})) == {"p": script}


def test_a_script_of_one_moment_has_no_rate() -> None:
    assert math.isnan(template.events_per_second([(0.0, [("created", b"{}")])]))


# --- profile summary --------------------------------------------------------------------


def test_collapsed_stacks_fold_into_self_inclusive_and_areas() -> None:
    lines = [
        "run (/x/lib/python3.11/asyncio/runners.py:118) 6",
        "run (/x/lib/python3.11/asyncio/runners.py:118);"
        "read (/x/lib/python3.11/site-packages/sqlalchemy/engine/base.py:10) 3",
        "_bootstrap (/x/lib/python3.11/threading.py:1002);"
        "worker (/x/lib/python3.11/site-packages/aiosqlite/core.py:59) 1",
        # Paths under the checkout, wherever it is, are shortened to app/...
        f"_commit ({hotspots.ROOT}/app/store/log.py:9) 2",
        "now (app/domain/events.py:3) 1",
        "wait (/x/lib/python3.11/threading.py:327);x (/x/lib/python3.11/enum.py:1) 1",
        "not a line",
    ]
    profile = hotspots.parse_raw(lines)
    assert profile.samples == 14
    assert profile.worker_threads == 2
    assert profile.areas["app.store"] == 2
    assert profile.areas["app.domain"] == 1
    assert profile.areas["other standard library"] == 1
    assert profile.app == {"_commit (app/store/log.py)": 2, "now (app/domain/events.py)": 1}
    assert profile.self_time["read (sqlalchemy/engine/base.py)"] == 3
    assert profile.inclusive["run (asyncio/runners.py)"] == 9
    assert profile.areas["event loop internals (uvloop, C)"] == 6
    assert profile.areas["SQLAlchemy"] == 3
    top_area = hotspots.top(profile.areas, profile, 1)
    assert top_area == [("event loop internals (uvloop, C)", pytest.approx(100 * 6 / 14))]


# --- report -----------------------------------------------------------------------------


def _result(target: str, events_per_s: float, p99: float, **kw: float) -> TargetResult:
    result = TargetResult(
        target=target,
        streams=100,
        pace_ms=20,
        window_s=10,
        offered_per_stream=20,
        events_per_generation=21,
        events_per_s=events_per_s,
        rss_idle_kib=kw.get("idle", 1000.0),
        rss_load_kib=kw.get("load", 3000.0),
    )
    result.latency = Summary(10, p99 / 2, p99, p99, p99, p99 / 2)
    result.post = Summary(10, 5, 10, kw.get("post", 50.0), 60, 5)
    result.resume = Summary(3, 5, 10, kw.get("resume", 20.0), 30, 5)
    result.verify = verify.summarize_checks([verify.check_stream("a", STORED, STORED)])
    return result


def test_targets_hold_when_the_service_keeps_up_with_the_relay() -> None:
    checks = report.evaluate(_result("service", 1000, 30), _result("relay", 1000, 15))
    not_applicable = [c.target for c in checks if c.holds is None]
    assert not_applicable == ["past saturation: 429, and streams keep pace"]
    assert all(c.holds for c in checks if c.holds is not None), checks


def test_targets_fail_when_the_service_falls_behind() -> None:
    service = _result("service", 500, 150, post=300, resume=80, load=11000)
    checks = {c.target: c for c in report.evaluate(service, _result("relay", 1000, 15))}
    assert checks["delivered events/s >= 1.0x relay"].measured == "0.50x"
    failed = {name for name, c in checks.items() if c.holds is False}
    assert failed == {
        "delivered events/s >= 1.0x relay",
        "p99 commit-to-client <= relay p99 + 20 ms",
        "p99 commit-to-client < 100 ms",
        "resume: first missed event p99 <= 50 ms",
        "POST /assistant/request p99 < 100 ms",
        "server memory < 50 KB per open stream",
        "past saturation: 429, and streams keep pace",
    }


def test_shedding_holds_when_a_saturated_service_refuses_and_keeps_its_streams_fast() -> None:
    service = _result("service", 500, 40)
    service.post_statuses = {201: 400, 429: 120}
    checks = {c.target: c for c in report.evaluate(service, _result("relay", 1000, 15))}
    shedding = checks["past saturation: 429, and streams keep pace"]
    assert shedding.holds is True
    assert shedding.measured == "120 POSTs refused with 429, p99 40.0 ms"


def test_shedding_fails_when_refusing_does_not_keep_the_streams_fast() -> None:
    service = _result("service", 500, 240)
    service.post_statuses = {201: 400, 429: 120}
    checks = {c.target: c for c in report.evaluate(service, None)}
    assert checks["past saturation: 429, and streams keep pace"].holds is False


def test_a_fast_service_that_never_refused_is_not_past_saturation() -> None:
    checks = {c.target: c for c in report.evaluate(_result("service", 500, 40), None)}
    assert checks["past saturation: 429, and streams keep pace"].holds is None


def test_the_generated_block_replaces_only_itself(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    block = report.generated_block(
        [(_result("service", 900, 30), _result("relay", 1000, 15))], "scripts/bench", "2 cores"
    )
    report.write_markdown(doc, block)
    assert "## Findings" in doc.read_text()
    doc.write_text(doc.read_text().replace("(Write the findings here", "(Kept"))
    report.write_markdown(doc, block.replace("`scripts/bench`", "`scripts/bench --sweep 1`"))
    text = doc.read_text()
    assert "(Kept" in text
    assert "`scripts/bench --sweep 1`" in text
    assert text.count(report.BEGIN) == 1


def test_cpu_per_delivered_event_is_compared_with_the_relay() -> None:
    service = _result("service", 2000, 30)
    service.server_cpu, service.server_loop = 1.0, 0.6
    relay = _result("relay", 2500, 15)
    relay.server_cpu = relay.server_loop = 0.5
    rows = report.level_table(service, relay)
    row = next(line for line in rows if line.startswith("| server CPU per delivered event"))
    assert row.endswith("| 500 / 300 | 200 / 200 | 2.50x (all) |")
    idle = _result("relay", 0, 15)
    assert math.isnan(idle.cpu_us_per_event(0.5))


def test_the_posts_that_waited_for_a_commit_are_shown_apart_from_the_refusals() -> None:
    service = _result("service", 2000, 30)
    service.admitted_post = Summary(400, 30, 60, 90, 120, 35)
    relay = _result("relay", 2500, 15)
    rows = report.level_table(service, relay)
    row = next(line for line in rows if line.startswith("| of which admitted"))
    assert row.endswith("| 30.0 / 90.0, n=400 | n/a |  |")


def test_generations_started_count_created_requests_not_refusals() -> None:
    service = _result("service", 2000, 30)
    service.post_statuses = {200: 10, 201: 400, 429: 1200}
    rows = report.level_table(service, _result("relay", 2500, 15))
    row = next(line for line in rows if line.startswith("| generations started"))
    window = service.window_s
    started, posts = stats.format_number(400 / window), stats.format_number(1610 / window)
    assert f"| {started} / {posts} |" in row


def test_marginal_memory_is_the_slope_between_levels() -> None:
    low = _result("service", 1, 1, load=10_000.0)
    high = _result("service", 1, 1, load=30_000.0)
    high.streams = 300
    assert report.marginal_kib(low, high) == 100.0
    assert math.isnan(report.marginal_kib(low, low))
    lines = report.marginal_memory_lines([(low, None), (high, None)])
    assert "| 100 and 300 streams | 102.4 | n/a |" in lines


def test_memory_per_stream_divides_by_the_streams_sampled_open() -> None:
    """A starved machine holds fewer streams open than offered; dividing by the offered
    number would read low."""
    result = _result("service", 1, 1, idle=1_000.0, load=5_000.0)
    assert result.kib_per_stream == 40.0  # nothing sampled: the 100 streams offered
    result.open_streams = 50
    assert result.kib_per_stream == 80.0
    rows = report.level_section(result, None)
    assert any(row.startswith("| streams open, median") and "50 (of 100)" in row for row in rows)


def test_the_streams_open_are_the_median_of_the_samples_taken_with_the_rss() -> None:
    result = _result("service", 1, 1)
    samples = run._Samples(rss=[4_000, 5_000, 6_000], open_streams=[40, 50, 90])
    run._fill(result, Recorder(0.0, 1.0), samples, rss_idle=1_000.0)
    assert (result.rss_load_kib, result.open_streams) == (5_000, 50)
    assert result.kib_per_stream == 80.0
    low, high = _result("service", 1, 1, load=10_000.0), _result("service", 1, 1)
    high.rss_load_kib, high.streams = 30_000.0, 300
    low.open_streams, high.open_streams = 50, 250
    assert report.marginal_kib(low, high) == 100.0, "the slope between the streams open"


def test_each_slot_is_a_user_the_service_recognises() -> None:
    """The bench's tokens are what the service reads: the slot's user, admin for metrics."""
    name, value = users.bearer(users.user_of(3))
    assert name == "Authorization" and value.startswith("Bearer ")
    assert read_token(users.SECRET, value.removeprefix("Bearer ")) == Principal("bench-3")
    _, admin = users.bearer(users.ADMIN, admin=True)
    assert read_token(users.SECRET, admin.removeprefix("Bearer ")).admin
