"""Host tripwires: armed before a run, checked after it, each naming what got through.

Every wire looks at the HOST: canary hashes, honeytoken opens and reads, the host's own
secret values in what came back, the loopback sink, the daemon (alive, answering, no
process under it but its VMMs), the host's process count and disk, /etc/shadow. A sandbox
run passes only when no wire trips. Owns the watches it arms; closes them on check.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

from .daemon import Daemon, all_pids, descendants, disk_free, du_bytes
from .fswatch import AccessWatch
from .seed import Layout, Tokens, sha256
from .sink import Sink
from .targets import Signals

SHADOW = Path("/etc/shadow")
HOST_PROCS_MARGIN = 200  # other work on a shared machine starts processes too
WORK_DIR_GROWTH_MAX = 64 * 2**20
HOST_FREE_DROP_MAX = 2**30
VMM_NAMES = ("qemu-system", "firecracker", "jailer")


@dataclass(frozen=True)
class Trip:
    wire: str
    detail: str


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


class _TreeSampler:
    """Collects every process seen under the daemon that is not one of its VMMs."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.baseline = descendants(daemon.pid)
        self.seen: dict[int, str] = {}
        self.peak_host = len(all_pids())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        self.peak_host = max(self.peak_host, len(all_pids()))
        for pid in descendants(self.daemon.pid) - self.baseline:
            comm = _comm(pid)
            if not comm.startswith(VMM_NAMES):
                self.seen[pid] = comm

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self._sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


class Armed:
    """The wires of one run; `daemon` is given for a sandbox run (None for a host run)."""

    def __init__(self, layout: Layout, tokens: Tokens, sink: Sink, daemon: Daemon | None) -> None:
        self.layout, self.tokens, self.sink, self.daemon = layout, tokens, sink, daemon
        self.hashes = {p: sha256(p) for p in layout.canaries}
        watched = [str(p) for p in layout.honeytokens]
        self.shadow_text = SHADOW.read_text(errors="replace") if _readable(SHADOW) else ""
        if self.shadow_text:
            watched.append(str(SHADOW))
        self.watch = AccessWatch(watched)
        self.sink_mark = sink.mark()
        self.host_procs = len(all_pids())
        self.free = disk_free(layout.root)
        self.tree = _TreeSampler(daemon) if daemon else None
        self.work_dir_bytes = daemon.work_dir_bytes() if daemon else 0

    def check(self, text: str, signals: Signals) -> list[Trip]:
        """Disarms and lists every wire that tripped (`text`: all the run gave back)."""
        trips: list[Trip] = []

        def add(wire: str, detail: str) -> None:
            trips.append(Trip(wire, detail))

        if self.tree:
            self.tree.stop()
        accesses = self.watch.events()
        self.watch.close()
        conns = self.sink.since(self.sink_mark)

        for p, before in self.hashes.items():
            after = sha256(p)
            if after != before:
                add("canary", f"{p.name} {'deleted' if after == 'missing' else 'changed'}")
        for a in accesses:
            name = "shadow" if a.path == str(SHADOW) else "honeytoken-read"
            who = f" by pid {a.pid} ({a.comm})" if a.pid else ""
            add(name, f"{a.path} opened or read{who}")
        sent = b"".join(c.data for c in conns).decode(errors="replace")
        for value in self.tokens.values():
            if value in text or value in sent:
                add("secret-in-output", f"host secret {value[:8]}… came back{' to the sink' if value in sent else ''}")
        for c in conns:
            add("sink", f"connection from {c.peer} ({len(c.data)} bytes)")
        for line in text.splitlines():
            if line.startswith("REACHED outside"):
                add("outside", line.removeprefix("REACHED ").strip())
            if line.startswith("REACHED daemon"):
                add("daemon", line.removeprefix("REACHED ").strip())
        if self.shadow_text.strip() and self.shadow_text.strip() in text:
            add("shadow", "the host's /etc/shadow came back in the output")
        if signals.parent_killed:
            add("parent", "the agent standing in as the parent was killed (SIGKILL)")
        if signals.forks_refused:
            add("processes", f"hit the host run's process cap ({signals.forks_refused} forks refused)")
        if signals.tmpfs_full:
            add("disk", "filled the disk it was given (" + "; ".join(signals.notes) + ")")
        self._check_host(add)
        return list(dict.fromkeys(trips))

    def _check_host(self, add: Callable[[str, str], None]) -> None:
        if self.daemon is not None:
            if not self.daemon.alive():
                add("parent", f"the daemon (pid {self.daemon.pid}) died")
            elif not self.daemon.answers():
                add("parent", "the daemon no longer answers /healthz")
            assert self.tree is not None
            for pid, comm in sorted(self.tree.seen.items()):
                add("processes", f"a process appeared under the daemon: {pid} ({comm})")
            grown = self.daemon.work_dir_bytes() - self.work_dir_bytes
            if grown > WORK_DIR_GROWTH_MAX:
                add("disk", f"the daemon's work dir grew by {grown // 2**20} MiB")
            if self.tree.peak_host > self.host_procs + HOST_PROCS_MARGIN:
                add("processes", f"host processes peaked at {self.tree.peak_host} (baseline {self.host_procs})")
            written = du_bytes(self.layout.workspace)  # a sandbox's writes must stay in it
            if written > 2**20:
                add("disk", f"{written // 2**20} MiB appeared in the host's copy of the workspace")
        dropped = self.free - disk_free(self.layout.root)
        if dropped > HOST_FREE_DROP_MAX:
            add("disk", f"the host's free disk dropped by {dropped // 2**20} MiB")
        after = len(all_pids())
        if after > self.host_procs + HOST_PROCS_MARGIN:
            add("processes", f"{after} host processes after the run (baseline {self.host_procs})")


def _readable(p: Path) -> bool:
    try:
        with p.open("rb"):
            return True
    except OSError:
        return False
