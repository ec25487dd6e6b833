"""What ``/proc`` says about a process: CPU seconds (of the process or of each thread), resident memory
and its peak, children, listening sockets. Linux only."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field


def _stat_fields(path: str) -> list[str]:
    """The fields of a ``/proc/.../stat`` file after the command name (which may hold spaces and
    parentheses: the fields follow the last ')')."""
    with open(path) as f:
        return f.read().rsplit(")", 1)[1].split()


def proc_status_kb(pid: int, field: str) -> int | None:
    """A ``kB`` field (``VmRSS``, ``VmHWM`` ...) of ``/proc/PID/status``; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def child_pids(pid: int) -> list[int]:
    """Direct and indirect children of ``pid`` (from ``/proc/*/stat``)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(_stat_fields(f"/proc/{entry}/stat")[1])
            except (OSError, IndexError, ValueError):
                continue
    out, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        out.extend(kids)
        frontier.extend(kids)
    return out


def cpu_seconds(pid: int, stat_path: str | None = None) -> float:
    """User + system CPU seconds of a process (or of the thread whose ``/proc/.../stat`` is given)."""
    try:
        fields = _stat_fields(stat_path or f"/proc/{pid}/stat")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of every thread of a process, by thread id: a native thread spinning (no Python
    frames, invisible to py-spy) shows up here."""
    from glob import glob

    return {path.split("/")[-2]: cpu_seconds(pid, path) for path in glob(f"/proc/{pid}/task/*/stat")}


@dataclass
class Usage:
    """CPU% (CPU seconds / wall seconds since creation) and resident memory of a process."""

    pid: int
    t0: float = field(default_factory=time.monotonic)
    cpu0: float = 0.0

    def __post_init__(self):
        self.cpu0 = cpu_seconds(self.pid)

    def read(self) -> dict:
        wall = time.monotonic() - self.t0
        cpu = cpu_seconds(self.pid) - self.cpu0
        rss, peak = proc_status_kb(self.pid, "VmRSS") or 0, proc_status_kb(self.pid, "VmHWM") or 0
        return {"cpu_percent": round(100.0 * cpu / wall, 1) if wall > 0 else None, "cpu_seconds": round(cpu, 2),
                "rss_mb": round(rss / 1024, 1), "peak_rss_mb": round(peak / 1024, 1)}


class RssSampler:
    """Sample the resident memory of a process tree every ``interval_s`` in a background thread.

        with RssSampler(worker.pid) as rss:
            ... load ...
        rss.peak_mb, rss.samples   # [(seconds since start, MB), ...]
    """

    def __init__(self, pid: int, interval_s: float = 0.2, include_children: bool = True):
        self.pid = pid
        self.interval_s = interval_s
        self.include_children = include_children
        self.samples: list[tuple[float, float]] = []
        self.hwm_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._t0 = time.monotonic()

    def rss_mb(self) -> float | None:
        pids = [self.pid] + (child_pids(self.pid) if self.include_children else [])
        values = [proc_status_kb(p, "VmRSS") for p in pids]
        if values[0] is None:
            return None
        return sum(v for v in values if v) / 1024.0

    def _run(self) -> None:
        while not self._stop.is_set():
            mb = self.rss_mb()
            if mb is None:
                return
            self.samples.append((time.monotonic() - self._t0, mb))
            hwm = proc_status_kb(self.pid, "VmHWM")
            if hwm is not None:
                self.hwm_mb = hwm / 1024.0
            self._stop.wait(self.interval_s)

    @property
    def peak_mb(self) -> float:
        return max((mb for _, mb in self.samples), default=0.0)

    def start(self) -> "RssSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def __enter__(self) -> "RssSampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def listening_sockets(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket the process ``pid`` is *listening* on (IPv4 and IPv6), read
    from ``/proc/PID/net/tcp*`` and matched to the process's own file descriptors by socket inode."""
    import ipaddress

    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            link = os.readlink(f"{fd_dir}/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    out = []
    for table, width in (("tcp", 4), ("tcp6", 16)):
        with contextlib.suppress(FileNotFoundError):
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f)
                for line in f:
                    cols = line.split()
                    local, state, inode = cols[1], cols[3], cols[9]
                    if state != "0A" or inode not in inodes:  # 0A = TCP_LISTEN
                        continue
                    hex_ip, hex_port = local.split(":")
                    raw = bytes.fromhex(hex_ip)
                    # the kernel prints each 32-bit word in host (little endian) order
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, width, 4))
                    out.append((str(ipaddress.ip_address(raw)), int(hex_port, 16)))
    return out
