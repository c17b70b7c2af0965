"""How quick the host's cores are at the time of a run: a fixed piece of interpreter work,
timed in the CPU time of the thread that does it.

On a shared virtual machine the CPU time that the same work takes is not fixed. Steal
(time the host ran something else while a core of ours was ready) shows only part of it:
on the machine these figures come from, this probe took 43 ms of CPU on a quiet host and
93-119 ms in minutes when a run saw under 600 jiffies of steal (docs/benchmarks.md,
"Quick and slow hosts"). Every figure of a run that is CPU per something moves with it,
so each run times the probe over and over through its window, in a process of its own
at the lowest priority (``processes.start_host_probe``), and the report gives the
figures beside the steal. The figure is CPU time, so the probe's own waits for a core
leave it alone.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Sequence


def interpreter_work(n: int = 200_000) -> int:
    """Dictionary stores, integer formatting and small allocations, as a service's Python
    does them: about 43 ms of CPU on a quiet core of the benchmark's host."""
    table: dict[int, int] = {}
    total = 0
    for i in range(n):
        table[i & 1023] = i
        total += len(str(i))
    return total


def cpu_ms(work: Callable[[], object]) -> float:
    """The CPU time (ms) this thread spends on ``work``: waiting for a core, for the
    interpreter lock or for anything else does not count."""
    started = time.thread_time()
    work()
    return (time.thread_time() - started) * 1e3


def main(argv: Sequence[str]) -> int:
    """``python -m scripts.benchlib.hostspeed SECONDS``: time ``interpreter_work`` over and
    over for SECONDS, printing each figure (ms of CPU) on a line of its own."""
    until = time.monotonic() + float(argv[0])
    while time.monotonic() < until:
        print(f"{cpu_ms(interpreter_work):.2f}", flush=True)
    return 0


def read_figures(text: str) -> list[float]:
    """The figures a probe printed (a last line cut short by its stop is left out)."""
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            out.append(float(line))
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
