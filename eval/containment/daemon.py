"""The host's view of the emberd daemon under test: is it alive, does it answer, what does
its process tree hold, how much disk its work dir takes.

Finds the daemon's pid from the socket listening on its port (through /proc), so it works
for a daemon it did not start. Reads only; never signals the daemon.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx


def _listening_inode(port: int) -> str | None:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                return cols[9]
    return None


def pid_listening_on(port: int) -> int | None:
    inode = _listening_inode(port)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") == target:
                    return int(entry)
        except OSError:
            continue
    return None


def all_pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def _parents() -> dict[int, int]:
    out = {}
    for pid in all_pids():
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
            out[pid] = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError):
            continue
    return out


def descendants(root: int) -> set[int]:
    parents = _parents()
    found = {root}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                changed = True
    return found - {root}


def du_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


@dataclass
class Daemon:
    addr: str
    pid: int
    work_dir: Path
    info: dict[str, object]

    @classmethod
    def find(cls, addr: str) -> Daemon:
        port = int(addr.rsplit(":", 1)[1])
        info = httpx.get(f"http://{addr}/info", timeout=10).raise_for_status().json()
        pid = pid_listening_on(port)
        if pid is None:
            raise SystemExit(f"eval: no process on this host listens on {addr}: the eval must run beside the daemon")
        return cls(addr, pid, Path(str(info["work_dir"])), info)

    @property
    def port(self) -> int:
        return int(self.addr.rsplit(":", 1)[1])

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
            return True
        except ProcessLookupError:
            return False

    def answers(self) -> bool:
        try:
            return httpx.get(f"http://{self.addr}/healthz", timeout=10).status_code == 200
        except httpx.HTTPError:
            return False

    def children(self) -> set[int]:
        """The daemon's process tree below it (its VMMs and anything they started)."""
        return descendants(self.pid)

    def work_dir_bytes(self) -> int:
        return du_bytes(self.work_dir)


def disk_free(path: Path) -> int:
    return shutil.disk_usage(path).free
