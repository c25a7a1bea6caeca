"""Memory and CPU of a server process while a scenario runs, read from /proc.

VmHWM (the kernel's high-water mark) is the peak since the process started, so the
memory scenario restarts the server first; VmRSS sampled every 50 ms gives the curve as
well and catches any child processes the server may spawn. CPU seconds per scenario show
whether a server was CPU-bound (a single-threaded server cannot pass 1.0 core).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

MiB = 1024 * 1024
INTERVAL = 0.05


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                pass
    return found


def cpu_seconds(pid: int) -> float:
    """user+system CPU seconds `pid` and its live descendants have used so far."""
    ticks = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _machine_fields() -> list[int]:
    """/proc/stat's first line: user nice system idle iowait irq softirq steal, in clock ticks since boot."""
    return [int(n) for n in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy (not idle, not waiting on I/O) since boot: with
    other work on a shared machine, whether the cores were the limit of a run, whoever used them."""
    fields = _machine_fields()
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def machine_steal_seconds() -> float:
    """CPU seconds the hypervisor ran something else while this virtual machine's cores had work (part of
    machine_busy_seconds): a neighbour's load, which slows whatever runs here."""
    return _machine_fields()[7] / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Current VmRSS of `pid` and its descendants."""
    return sum(_status_kib(p, "VmRSS") for p in tree(pid)) * 1024


def peak_bytes(pid: int) -> int:
    """VmHWM of `pid`: its peak resident set since it started."""
    return _status_kib(pid, "VmHWM") * 1024


class RssSampler:
    """`with RssSampler(pid) as s: ...` then `s.peak` (bytes, sampled max) and `s.hwm`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.hwm = 0
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL):
            self.samples.append(rss_bytes(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.hwm = peak_bytes(self.pid)
        self.peak = max([*self.samples, rss_bytes(self.pid)])
