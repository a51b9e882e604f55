"""CPU seconds a contender spends during a run, split by where they go.

On a 2-core machine wall-clock figures move with every other job, while the CPU time each part of a contender uses
for the same work barely does: it shows where serving overhead sits even when throughput numbers are noisy.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path
from types import TracebackType


def group_cpu_s(pgid: int) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each live process of a process group, by pid."""
    tick = os.sysconf("SC_CLK_TCK")
    usage = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Fields after the parenthesised command name, 0-based: state ppid pgrp ...; utime and stime at 11, 12.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            usage[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    return usage


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, summed over its cores (/proc/stat)."""
    with open("/proc/stat") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    tick = os.sysconf("SC_CLK_TCK")
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / tick, sum(ticks) / tick


def _own_cpu_s() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class CpuMeter:
    """Context manager: .seconds = {"front": the groups' leaders, "engine": the rest of the groups, "client": this
    process and the children it reaped meanwhile}. Leaders are HTTP servers (or the raw-engine driver); the
    other members are the engine-core processes they spawned. .busy: the share of the whole machine's CPU (all
    cores, every process) in use meanwhile; near 1, the contender and its client compete for the cores, and any
    CPU one of them saves goes to the other."""

    def __init__(self, pgids: tuple[int, ...]) -> None:
        self.pgids = pgids
        self.seconds: dict[str, float] = {}
        self.busy = 0.0

    def __enter__(self) -> CpuMeter:
        self._before = {g: group_cpu_s(g) for g in self.pgids}
        self._own = _own_cpu_s()
        self._machine = machine_cpu_s()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        front = engine = 0.0
        for g in self.pgids:
            before = self._before[g]
            for pid, used in group_cpu_s(g).items():
                if pid == g:
                    front += used - before.get(pid, 0.0)
                else:
                    engine += used - before.get(pid, 0.0)
        self.seconds = {"front": front, "engine": engine, "client": _own_cpu_s() - self._own}
        busy, total = machine_cpu_s()
        self.busy = (busy - self._machine[0]) / max(total - self._machine[1], 1e-9)
