"""The benchmark's accounting of a process tree (a supervisor and its workers)."""

from __future__ import annotations

import os
import subprocess
import sys

from scripts.benchlib import procstat


def test_a_process_family_holds_its_descendants_and_sums_them() -> None:
    with subprocess.Popen([sys.executable, "-c", "input()"], stdin=subprocess.PIPE) as child:
        try:
            me = os.getpid()
            members = procstat.family(me)
            assert members[0] == me and child.pid in members
            assert procstat.tree_rss_kib(me) > procstat.rss_kib(me)
            assert procstat.tree_cpu_times(me).total >= procstat.cpu_times(me).total
        finally:
            child.kill()
