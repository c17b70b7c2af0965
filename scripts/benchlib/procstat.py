"""CPU time and memory of processes, and busy time of the machine, from /proc (Linux)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class CpuTimes(NamedTuple):
    """CPU seconds a process has used: in user space and in the kernel."""

    user: float
    system: float

    @property
    def total(self) -> float:
        return self.user + self.system


def parse_cpu_times(stat: str) -> CpuTimes:
    """User and system CPU seconds from the text of ``/proc/<pid>/stat``."""
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return CpuTimes(utime / CLOCK_TICKS, stime / CLOCK_TICKS)


def parse_rss_kib(status: str) -> int:
    """Resident set size (``VmRSS``) in KiB from the text of ``/proc/<pid>/status``."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError("no VmRSS line (is the process a zombie?)")


class MachineTimes(NamedTuple):
    """Jiffies of all CPUs since boot: busy, total, interrupt handling (irq + softirq), and
    steal (time a virtual machine's CPUs were ready to run while the host ran something
    else; counted busy, as /proc/stat has it)."""

    busy: int
    total: int
    interrupts: int = 0
    steal: int = 0


def parse_machine_times(stat: str) -> MachineTimes:
    """Busy and total jiffies from the ``cpu`` line of ``/proc/stat``."""
    for line in stat.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:9]]
            values += [0] * (8 - len(values))  # (kernels before 2.6.11 have no steal)
            idle = values[3] + values[4]  # idle + iowait
            return MachineTimes(sum(values) - idle, sum(values), values[5] + values[6], values[7])
    raise ValueError("no cpu line in /proc/stat")


def cpu_times(pid: int) -> CpuTimes:
    """CPU seconds used so far by ``pid`` (all its threads)."""
    return parse_cpu_times(Path(f"/proc/{pid}/stat").read_text())


def thread_cpu_times(pid: int, tid: int) -> CpuTimes:
    """CPU seconds used so far by one thread of ``pid`` (the main thread: ``tid == pid``)."""
    return parse_cpu_times(Path(f"/proc/{pid}/task/{tid}/stat").read_text())


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` now, in KiB."""
    return parse_rss_kib(Path(f"/proc/{pid}/status").read_text())


def family(pid: int) -> list[int]:
    """``pid`` and every process descended from it (a supervisor and its workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # (it exited meanwhile)
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        out.append(todo.pop())
        todo.extend(children.get(out[-1], []))
    return out


def _summed(readings: list[CpuTimes]) -> CpuTimes:
    return CpuTimes(sum(r.user for r in readings), sum(r.system for r in readings))


def tree_cpu_times(pid: int) -> CpuTimes:
    """CPU seconds used so far by ``pid`` and its descendants (all their threads)."""
    return _summed([_or_zero(cpu_times, p) for p in family(pid)])


def tree_main_thread_cpu_times(pid: int) -> CpuTimes:
    """CPU seconds used so far by the main threads (event loops) of ``pid`` and its
    descendants."""
    return _summed([_or_zero(lambda p: thread_cpu_times(p, p), p) for p in family(pid)])


def tree_rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants now, in KiB."""
    total = 0
    for p in family(pid):
        try:
            total += rss_kib(p)
        except (OSError, ValueError):
            continue
    return total


def _or_zero(read: Callable[[int], CpuTimes], pid: int) -> CpuTimes:
    try:
        return read(pid)
    except OSError:
        return CpuTimes(0.0, 0.0)


def machine_times() -> MachineTimes:
    """Busy and total jiffies of the machine so far."""
    return parse_machine_times(Path("/proc/stat").read_text())


def _share(before: MachineTimes, after: MachineTimes, part: Callable[[MachineTimes], int]) -> float:
    """``part``'s share of all CPUs' time between two readings (0..1; NaN for none)."""
    total = after.total - before.total
    return (part(after) - part(before)) / total if total > 0 else float("nan")


def busy_fraction(before: MachineTimes, after: MachineTimes) -> float:
    """Share of all CPUs' time spent busy between two readings (0..1)."""
    return _share(before, after, lambda t: t.busy)


def interrupt_fraction(before: MachineTimes, after: MachineTimes) -> float:
    """Share of all CPUs' time spent in irq and softirq handlers (loopback TCP runs there)."""
    return _share(before, after, lambda t: t.interrupts)


def steal_fraction(before: MachineTimes, after: MachineTimes) -> float:
    """Share of all CPUs' time the host took back (steal) between two readings (0..1)."""
    return _share(before, after, lambda t: t.steal)
