"""Bounds for the host runs, so that an action that "gets through" cannot harm the machine.

`PidsCgroup` is a pids cgroup (v2, else v1) holding one host run: a cap on its processes
for the fork bomb, and a way to kill everything a run left behind for every action.
Without a writable pids cgroup, a non-root eval falls back to `RLIMIT_NPROC`; a root eval
(for which that limit does not hold) then refuses to run the fork bomb on the host.
`disk_wrapper` runs a host run in its own mount namespace with a small tmpfs over the
workspace, so that filling "the disk" fills 32 MiB of memory that vanish with the run.
Owns the cgroups it makes and removes them; never touches any other.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import time
from pathlib import Path

TMPFS_MIB = 32


def _own_path(controller: str) -> str | None:
    with open("/proc/self/cgroup", encoding="utf-8") as f:
        for line in f:
            _, names, path = line.rstrip("\n").split(":", 2)
            if (controller == "" and names == "") or controller in names.split(","):
                return path
    return None


def _base_dirs() -> list[Path]:
    out = []
    v2 = _own_path("")
    if v2 is not None and Path("/sys/fs/cgroup/cgroup.controllers").exists():
        base = Path("/sys/fs/cgroup") / v2.lstrip("/")
        sub = base / "cgroup.subtree_control"
        if sub.exists() and "pids" in sub.read_text().split():
            out.append(base)
    v1 = _own_path("pids")
    if v1 is not None and Path("/sys/fs/cgroup/pids").is_dir():
        out.append(Path("/sys/fs/cgroup/pids") / v1.lstrip("/"))
    return out


class PidsCgroup:
    def __init__(self, path: Path, max_pids: int) -> None:
        self.path, self.max_pids = path, max_pids

    @classmethod
    def create(cls, max_pids: int) -> PidsCgroup | None:
        """A new pids cgroup capped at `max_pids`, or None when none can be made here."""
        for base in _base_dirs():
            path = base / f"emberd-eval-{secrets.token_hex(4)}"
            try:
                path.mkdir()
            except OSError:
                continue
            try:
                (path / "pids.max").write_text(str(max_pids))
                return cls(path, max_pids)
            except OSError:
                path.rmdir()
        return None

    @property
    def procs_file(self) -> str:
        return str(self.path / "cgroup.procs")

    def hit_limit(self) -> int:
        """How many forks the cap refused."""
        try:
            for line in (self.path / "pids.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "max":
                    return int(value)
        except OSError:
            pass
        return 0

    def procs(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def kill_all(self, within_s: float = 10.0) -> None:
        """Stops every fork, kills every process and waits until they are gone."""
        (self.path / "pids.max").write_text("0")
        kill = self.path / "cgroup.kill"
        deadline = time.monotonic() + within_s
        while (left := self.procs()) and time.monotonic() < deadline:
            if kill.exists():
                kill.write_text("1")
            else:
                for pid in left:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            time.sleep(0.05)
        if self.procs():
            raise RuntimeError(f"processes outlived the kill in {self.path}: {self.procs()}")
        (self.path / "pids.max").write_text(str(self.max_pids))

    def remove(self) -> None:
        self.kill_all()
        deadline = time.monotonic() + 10
        while True:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def disk_wrapper() -> list[str] | None:
    """The prefix that gives a run its own mount namespace, or None when none can be had."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    if os.geteuid() == 0:
        return [unshare, "--mount", "--propagation", "private", "--"]
    return [unshare, "--user", "--map-root-user", "--mount", "--propagation", "private", "--"]
