"""Run one benchmark variant in a fresh process, so its time and peak memory are its own."""

from __future__ import annotations

import multiprocessing as mp
import resource
import time


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
