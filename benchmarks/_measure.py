"""Run one benchmark variant in a fresh process, so its time and peak memory are its own."""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import time
from pathlib import Path


def _child(fn, args, queue) -> None:
    started = time.perf_counter()
    count = fn(*args)
    # The largest of this process and any worker processes it started.
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    queue.put((time.perf_counter() - started, count, peak / 1024))


def measure(fn, *args) -> tuple[float, int, float]:
    """(seconds, what ``fn`` returned (a count), peak RSS in MB) of ``fn(*args)`` in a spawned process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has been busy (Linux ``/proc/stat``), or None: read before and after a
    run, the difference less the run's own CPU time is what other processes took meanwhile."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait
