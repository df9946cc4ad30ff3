"""Where an agent's code runs: on the host as a plain process, or in an emberd sandbox.

Both offer `run_code(language, code)` for one action's run (an agent may call it several
times) and `finish()`, which ends the run and says what the host saw of it. A host run is
a child of a stand-in parent, in the throwaway tree, HOME pointed at its fake home, inside
its own pids cgroup (and a private tmpfs for the disk fill) so that nothing outlives it.
A sandbox run writes the program into the guest at the same path and runs it there with
the same working directory and HOME.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from emberd import Sandbox

from .actions import Action
from .hostbound import TMPFS_MIB, PidsCgroup, disk_wrapper
from .seed import Layout

STAND_IN = Path(__file__).parent / "stand_in.py"
FORK_BOMB_CAP = 64
REAP_CAP = 4096
LEFTOVER_GRACE_S = 3.0
OUTPUT_CAP = 4 * 2**20
INTERPRETERS = {"bash": ("bash", ".sh"), "python": ("python3", ".py")}


@dataclass
class RunResult:
    stdout: str
    stderr: str
    exit_code: int | None
    error: str | None = None

    def text(self) -> str:
        return self.stdout + self.stderr + (self.error or "")

    def for_agent(self, limit: int = 4000) -> str:
        return json.dumps(
            {"exit_code": self.exit_code, "stdout": self.stdout[-limit:], "stderr": self.stderr[-limit:], "error": self.error}
        )


@dataclass
class Signals:
    """What the target itself saw of a run, beside the tripwires."""

    parent_killed: bool = False
    forks_refused: int = 0
    tmpfs_full: bool = False
    not_run: str = ""
    notes: list[str] = field(default_factory=list)


class Run(Protocol):
    def run_code(self, language: str, code: str) -> RunResult: ...

    def finish(self) -> Signals: ...


def _program(layout: Layout, n: int, language: str) -> tuple[str, Path]:
    if language not in INTERPRETERS:
        raise ValueError(f"unknown language {language!r} (bash or python)")
    interp, suffix = INTERPRETERS[language]
    return interp, layout.programs / f"run-{n}{suffix}"


class HostRun:
    def __init__(self, layout: Layout, action: Action) -> None:
        self.layout, self.action = layout, action
        self.signals = Signals()
        self.cgroup = PidsCgroup.create(FORK_BOMB_CAP if action.host_bound == "pids" else REAP_CAP)
        self.calls = 0
        self.wrapper: list[str] = []
        if action.host_bound == "pids" and self.cgroup is None and os.geteuid() == 0:
            self.signals.not_run = "no pids cgroup to bound it (RLIMIT_NPROC does not hold for root)"
        if action.host_bound == "disk":
            wrapper = disk_wrapper()
            if wrapper is None:
                self.signals.not_run = "no private mount namespace for a small tmpfs (unshare missing)"
            self.wrapper = wrapper or []

    def run_code(self, language: str, code: str) -> RunResult:
        if self.signals.not_run:
            return RunResult("", "", None, f"not run on the host: {self.signals.not_run}")
        self.calls += 1
        interp, path = _program(self.layout, self.calls, language)
        path.write_text(code)
        report = self.layout.programs / f"report-{self.calls}.json"
        cmd = [*self.wrapper, sys.executable, str(STAND_IN), "--report", str(report)]
        if self.cgroup is not None:
            cmd += ["--cgroup", self.cgroup.procs_file]
        elif self.action.host_bound == "pids":
            cmd += ["--nproc", str(FORK_BOMB_CAP)]
        if self.action.host_bound == "disk":
            cmd += ["--tmpfs", str(self.layout.workspace), "--tmpfs-mib", str(TMPFS_MIB)]
        cmd += ["--", shutil.which(interp) or interp, str(path)]
        env = {"HOME": str(self.layout.home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        proc = subprocess.Popen(
            cmd, cwd=self.layout.workspace, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        readers = [_Reader(proc.stdout), _Reader(proc.stderr)]
        error = None
        try:
            proc.wait(timeout=self.action.timeout_s)
        except subprocess.TimeoutExpired:
            error = f"timed out after {self.action.timeout_s} s"
        # What the run left running gets a short grace to finish printing, then dies with
        # it, as every process an exec started dies with the exec in a sandbox.
        for r in readers:
            r.join(LEFTOVER_GRACE_S)
        if self.cgroup is not None:
            self.signals.forks_refused = max(self.signals.forks_refused, self.cgroup.hit_limit())
        self._kill_everything(proc)
        proc.wait()
        out, err = (r.result() for r in readers)
        if proc.returncode == -signal.SIGKILL and error is None:
            self.signals.parent_killed = True
        code_ = None
        if report.exists():
            data = json.loads(report.read_text())
            code_ = int(data["exit"])
            if "tmpfs_avail" in data:
                self.signals.tmpfs_full = data["tmpfs_avail"] < 1024 * 1024
                self.signals.notes.append(f"tmpfs {data['tmpfs_size'] // 2**20} MiB, {data['tmpfs_avail'] // 1024} KiB left")
        return RunResult(out.decode(errors="replace"), err.decode(errors="replace"), code_, error)

    def _kill_everything(self, proc: subprocess.Popen[bytes]) -> None:
        if self.cgroup is not None:
            self.cgroup.kill_all()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def finish(self) -> Signals:
        if self.cgroup is not None:
            self.cgroup.remove()  # kills whatever the run left behind
        return self.signals


class _Reader:
    def __init__(self, pipe: IO[bytes] | None) -> None:
        assert pipe is not None
        self.pipe, self.data = pipe, bytearray()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while piece := os.read(self.pipe.fileno(), 65536):
            if len(self.data) < OUTPUT_CAP:
                self.data += piece

    def join(self, timeout_s: float) -> None:
        self.thread.join(timeout_s)

    def result(self) -> bytes:
        self.thread.join(10)
        self.pipe.close()
        return bytes(self.data)


def guest_launcher(layout: Layout, path: Path, interp: str, code: str) -> str:
    """Python run by the sandbox's exec: writes the program, then becomes its interpreter."""
    return (
        "import os\n"
        f"open({str(path)!r}, 'w').write({code!r})\n"
        f"os.chdir({str(layout.workspace)!r})\n"
        f"os.environ['HOME'] = {str(layout.home)!r}\n"
        f"os.execvp({interp!r}, [{interp!r}, {str(path)!r}])\n"
    )


class SandboxRun:
    def __init__(self, layout: Layout, action: Action, sandbox: Sandbox, user: str | None = None) -> None:
        self.layout, self.action, self.sandbox, self.user = layout, action, sandbox, user
        self.calls = 0

    def run_code(self, language: str, code: str) -> RunResult:
        self.calls += 1
        interp, path = _program(self.layout, self.calls, language)
        launcher = guest_launcher(self.layout, path, interp, code)
        r = self.sandbox.exec(launcher, timeout_ms=self.action.timeout_s * 1000, user=self.user)
        return RunResult(r.stdout, r.stderr, r.exit_code, r.error)

    def finish(self) -> Signals:
        return Signals()
