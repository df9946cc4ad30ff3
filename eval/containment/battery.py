"""Runs the battery: every action once on the host, once in a sandbox, tripwires around each.

Owns the throwaway tree, the sink and the sandboxes it creates, and removes them all
whatever happens. One sandbox serves the actions that disturb nothing (and stands by
while the others run, to show it still answers); the kill, the fork bomb and the disk
fill each get their own.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from emberd import EmberdError, Sandbox

from .actions import Action
from .agents import Agent, Episode
from .daemon import Daemon
from .seed import Layout, Tokens, guest_seed_code, make_root, seed_host
from .sink import Sink
from .targets import HostRun, RunResult, SandboxRun
from .tripwires import Armed, Trip

PACK = "python"
PROBE_TIMEOUT_MS = 30_000


@dataclass
class Side:
    ran: bool = False
    trips: list[Trip] = field(default_factory=list)
    said: list[str] = field(default_factory=list)  # RESULT/REACHED lines and errors
    after: list[str] = field(default_factory=list)  # the sandbox's state afterwards
    agent_answer: str = ""
    seconds: float = 0.0


@dataclass
class Outcome:
    action: Action
    host: Side = field(default_factory=Side)
    sandbox: Side = field(default_factory=Side)


def _said(text: str, errors: list[str | None]) -> list[str]:
    lines = [ln.strip() for ln in text.splitlines() if ln.startswith(("RESULT:", "REACHED"))]
    return [ln.removeprefix("RESULT: ") for ln in lines] + [f"error: {e}" for e in errors if e]


class Battery:
    def __init__(self, agent: Agent, daemon_addr: str | None, log: bool = True, sandbox_user: str | None = None) -> None:
        self.agent, self.daemon_addr, self.log_on = agent, daemon_addr, log
        self.sandbox_user = sandbox_user  # None: the daemon's default (`sandbox`)
        self.layout: Layout = make_root()
        self.sink = Sink()
        self.host_tokens, self.guest_tokens = Tokens(), Tokens()
        self.daemon = Daemon.find(daemon_addr) if daemon_addr else None
        self.params = {
            "ROOT": str(self.layout.root),
            "SINK_PORT": str(self.sink.port),
            "DAEMON_PORT": str(self.daemon.port if self.daemon else 7777),
        }

    def log(self, msg: str) -> None:
        if self.log_on:
            print(f"eval: {msg}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.sink.close()
        shutil.rmtree(self.layout.root, ignore_errors=True)

    def host_run(self, action: Action, side: Side) -> None:
        self.log(f"{action.id}: host run")
        seed_host(self.layout, self.host_tokens)
        armed = Armed(self.layout, self.host_tokens, self.sink, None)
        run = HostRun(self.layout, action)
        started = time.monotonic()
        try:
            episode = self.agent.drive(action, self.params, run.run_code)
        finally:
            signals = run.finish()
        side.seconds = time.monotonic() - started
        side.ran = not signals.not_run
        side.trips = armed.check(episode.text(), signals)
        side.said = _said(episode.text(), [r.error for r in episode.results])
        side.agent_answer = episode.answer

    def sandbox_run(self, action: Action, sandbox: Sandbox, bystander: Sandbox | None, side: Side) -> bool:
        """Runs `action` in `sandbox`; says whether the shared sandbox (`bystander`, else
        `sandbox`) still answers."""
        assert self.daemon is not None
        self.log(f"{action.id}: sandbox run in {sandbox.id}")
        seed_host(self.layout, self.host_tokens)  # the host's copy, watched while the sandbox runs
        seeded = sandbox.exec(guest_seed_code(self.layout, self.guest_tokens), timeout_ms=PROBE_TIMEOUT_MS)
        if seeded.exit_code != 0:
            raise RuntimeError(f"seeding the sandbox failed: {seeded.stderr or seeded.error}")
        armed = Armed(self.layout, self.host_tokens, self.sink, self.daemon)
        run = SandboxRun(self.layout, action, sandbox, self.sandbox_user)
        started = time.monotonic()
        try:
            episode = self.agent.drive(action, self.params, run.run_code)
        except EmberdError as e:  # the sandbox went away: contained, but say so
            episode = Episode([RunResult("", "", None, f"the sandbox failed: {e}")], "")
        side.seconds = time.monotonic() - started
        side.ran = True
        side.trips = armed.check(episode.text(), run.finish())
        side.said = _said(episode.text(), [r.error for r in episode.results])
        side.agent_answer = episode.answer
        answers = _answers(sandbox)
        side.after.append(f"{'it' if bystander else 'the sandbox'} answers: {answers}")
        if bystander is not None:
            answers = _answers(bystander)
            side.after.append(f"other sandbox answers: {answers}")
        return answers == "yes"

    def run(self, actions: list[Action], host: bool = True, sandbox: bool = True) -> list[Outcome]:
        outcomes = [Outcome(a) for a in actions]
        if host:
            for o in outcomes:
                self.host_run(o.action, o.host)
        if sandbox:
            if self.daemon is None:
                raise SystemExit("eval: the sandbox runs need a daemon (EMBERD_ADDR)")
            with contextlib.ExitStack() as stack:
                shared = stack.enter_context(_sandbox())
                for o in outcomes:
                    if o.action.own_sandbox:
                        with _sandbox() as own:
                            shared_answers = self.sandbox_run(o.action, own, shared, o.sandbox)
                    else:
                        shared_answers = self.sandbox_run(o.action, shared, None, o.sandbox)
                    if not shared_answers:  # an action broke it: the next ones get a new one
                        self.log(f"{shared.id} no longer answers; creating another")
                        shared = stack.enter_context(_sandbox())
        return outcomes


@contextmanager
def _sandbox() -> Iterator[Sandbox]:
    sb = Sandbox.create(pack=PACK, ttl_s=900)
    try:
        yield sb
    finally:
        try:
            sb.delete()
        except EmberdError:
            pass


def _answers(sb: Sandbox) -> str:
    try:
        r = sb.exec("print('alive')", timeout_ms=PROBE_TIMEOUT_MS)
    except EmberdError as e:
        return f"no ({e})"
    return "yes" if r.stdout.strip() == "alive" else f"no ({r.error or r.stderr.strip()[:80]})"
