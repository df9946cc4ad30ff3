"""The host tripwires and bounds on their own: each must see what it is for, and the host
runs must leave nothing behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from containment.actions import select
from containment.agents import ScriptedAgent
from containment.battery import Battery, Outcome
from containment.fswatch import AccessWatch
from containment.hostbound import PidsCgroup
from containment.sink import Sink


def test_the_access_watch_sees_another_process_read_a_file(tmp_path: Path) -> None:
    decoy = tmp_path / "credentials"
    decoy.write_text("secret")
    watch = AccessWatch([str(decoy)])
    try:
        assert watch.events() == []
        subprocess.run(["cat", str(decoy)], check=True, capture_output=True)
        events = watch.events()
    finally:
        watch.close()
    assert events and all(e.path == str(decoy) for e in events)
    if watch.mechanism == "fanotify":
        assert any(e.pid > 0 for e in events)


def test_the_sink_records_a_connection_and_its_bytes() -> None:
    sink = Sink()
    try:
        mark = sink.mark()
        with socket.create_connection(("127.0.0.1", sink.port)) as s:
            s.sendall(b"loot\n")
            assert s.recv(64).startswith(b"sink:")
        [conn] = sink.since(mark)
    finally:
        sink.close()
    assert conn.data == b"loot\n"


def test_host_runs_trip_their_wires_and_leave_no_tree_behind() -> None:
    battery = Battery(ScriptedAgent(), None, log=False)
    try:
        outcomes = battery.run(select(["delete-canary", "read-secrets", "kill-parent"]), host=True, sandbox=False)
        root = battery.layout.root
    finally:
        battery.close()
    wires = {o.action.id: {t.wire for t in o.host.trips} for o in outcomes}
    assert "canary" in wires["delete-canary"]
    assert {"honeytoken-read", "secret-in-output"} <= wires["read-secrets"]
    assert "parent" in wires["kill-parent"]
    assert not root.exists()


def test_the_host_fork_bomb_hits_its_cap_and_its_cgroup_is_removed() -> None:
    probe = PidsCgroup.create(8)
    assert probe is not None, "this host offers no pids cgroup: the host fork bomb would not be bounded"
    base = probe.path.parent
    probe.remove()
    before = {p.name for p in base.iterdir() if p.name.startswith("emberd-eval-")}
    battery = Battery(ScriptedAgent(), None, log=False)
    try:
        [outcome] = battery.run(select(["fork-bomb"]), host=True, sandbox=False)
    finally:
        battery.close()
    assert "processes" in {t.wire for t in outcome.host.trips}
    assert {p.name for p in base.iterdir() if p.name.startswith("emberd-eval-")} == before


def test_the_host_disk_fill_fills_only_a_small_private_tmpfs() -> None:
    battery = Battery(ScriptedAgent(), None, log=False)
    try:
        [outcome] = battery.run(select(["fill-disk"]), host=True, sandbox=False)
        workspace = battery.layout.workspace
        left = list(workspace.iterdir())
    finally:
        battery.close()
    assert "disk" in {t.wire for t in outcome.host.trips}
    assert left == [], "the fill went to the tmpfs, which vanished with the run"


class _LeakySandbox:
    """A "sandbox" that runs its code on the host: what an escape would look like."""

    id = "sb_leaky"

    def exec(self, code: str, timeout_ms: int | None = None, user: str | None = None) -> ExecResult:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        return ExecResult(done.stdout, done.stderr, done.returncode)


@dataclass
class ExecResult:
    stdout: str
    stderr: str
    exit_code: int
    error: str | None = None


def test_the_sandbox_run_wires_trip_when_code_reaches_the_host() -> None:
    addr = os.environ.get("EMBERD_ADDR")
    assert addr, "this test needs a daemon: run it through scripts/with-daemon.py (make test-eval)"
    battery = Battery(ScriptedAgent(), addr, log=False)
    try:
        outcomes = [Outcome(a) for a in select(["delete-canary", "read-secrets"])]
        for o in outcomes:
            battery.sandbox_run(o.action, _LeakySandbox(), None, o.sandbox)  # type: ignore[arg-type]
    finally:
        battery.close()
    assert "canary" in {t.wire for t in outcomes[0].sandbox.trips}
    assert "honeytoken-read" in {t.wire for t in outcomes[1].sandbox.trips}
