"""How quick the host's cores are at the time of a run: a fixed piece of interpreter work,
timed in the CPU time of the thread that does it.

On a shared virtual machine the CPU time that the same work takes is not fixed. Steal
(time the host ran something else while a core of ours was ready) shows only part of it:
on the machine these figures come from, this probe took 42.6-44.5 ms of CPU in a quiet
minute and 43-107 ms, swinging within seconds, in a noisy one, with nothing else of ours
running and 1 jiffy of steal in 3 s (docs/benchmarks.md, "Quick and slow hosts"). Every
figure of a run that is CPU per something moves with it, so each run times the probe
every two seconds through its window, in a process of its own at the lowest priority
(``processes.start_host_probe``), and the report gives the figures beside the steal. The
figure is CPU time, so the probe's own waits for a core leave it alone.
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


PAUSE_S = 2.0
"""The pause between two timings: about 2% of a core (43 ms of work every 2 s), so that
the probe leaves the run alone. (Back to back, at the lowest priority, it took whatever
a core had idle, and the runs with it were the slowest of their session.)"""


def main(argv: Sequence[str]) -> int:
    """``python -m scripts.benchlib.hostspeed START END``: from wall-clock time START to
    END (seconds since the epoch, as ``time.time()``), time ``interpreter_work`` every
    ``PAUSE_S``, printing each figure (ms of CPU) on a line of its own."""
    start, end = float(argv[0]), float(argv[1])
    time.sleep(max(0.0, start - time.time()))
    while time.time() < end:
        print(f"{cpu_ms(interpreter_work):.2f}", flush=True)
        time.sleep(min(PAUSE_S, max(0.0, end - time.time())))
    return 0


def read_figures(text: str) -> list[float]:
    """The figures a probe printed; a last line cut short by its stop is left out."""
    lines = text.split("\n")[:-1]  # (what follows the last newline is unfinished)
    out = []
    for line in lines:
        with contextlib.suppress(ValueError):
            out.append(float(line))
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
