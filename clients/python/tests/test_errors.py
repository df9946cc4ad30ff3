"""Errors: each failure is an EmberdError subclass carrying the daemon's message."""

from __future__ import annotations

import pytest

from emberd import (
    BadRequest,
    Client,
    Conflict,
    EmberdError,
    FileNotFound,
    LimitExceeded,
    NotFound,
    ProcessNotFound,
    Sandbox,
    SandboxNotFound,
    ServerError,
    TransportError,
    Unauthorized,
)
from emberd._errors import error_for


def test_unknown_sandbox_is_sandbox_not_found_everywhere(client: Client) -> None:
    ghost = Sandbox("sb_000000000000", client)
    for call in (ghost.info, lambda: ghost.exec("1"), lambda: ghost.files.read("/etc/hostname"),
                 ghost.processes.list, lambda: ghost.exec("1", on_stdout=print)):
        with pytest.raises(SandboxNotFound) as e:
            call()
        assert e.value.status == 404 and e.value.message == "sandbox not found"
        assert isinstance(e.value, NotFound) and isinstance(e.value, EmberdError)
    with pytest.raises(SandboxNotFound):
        Sandbox.connect("sb_000000000000", client=client)


def test_deleting_twice(client: Client) -> None:
    s = Sandbox.create(client=client)
    s.delete()
    with pytest.raises(SandboxNotFound):
        s.delete()
    with pytest.raises(SandboxNotFound):
        s.exec("print(1)")
    # Leaving a with block after an explicit delete is fine.
    with Sandbox.create(client=client) as s2:
        s2.delete()


def test_context_manager_deletes_on_exit_even_on_error(client: Client) -> None:
    with pytest.raises(RuntimeError):
        with Sandbox.create(client=client) as s:
            sid = s.id
            raise RuntimeError("user code failed")
    assert sid not in [i.id for i in client.list_sandboxes()]


def test_bad_input_is_bad_request(client: Client, sb: Sandbox) -> None:
    with pytest.raises(BadRequest, match='unknown language pack: "ruby"'):
        Sandbox.create(pack="ruby", client=client)
    with pytest.raises(BadRequest, match="memory_mib"):
        Sandbox.create(client=client, memory_mib=1)
    with pytest.raises(BadRequest, match="user"):
        sb.exec("print(1)", user="mallory")
    with pytest.raises(BadRequest, match="invalid path"):
        sb.files.read("relative/path")
    p = sb.processes.start(["sleep", "30"])
    with pytest.raises(BadRequest, match="signal"):
        p.kill(signal="NOPE")
    p.kill("KILL")
    with pytest.raises(ValueError):
        sb.processes.start(["true"], code="print(1)")


def test_missing_things_are_not_found(sb: Sandbox) -> None:
    with pytest.raises(FileNotFound, match="no such file: /no/such/file"):
        sb.files.read("/no/such/file")
    with pytest.raises(ProcessNotFound, match="no such process"):
        sb.processes.get(999999)
    assert not sb.files.exists("/no/such/file")


def test_conflicts(sb: Sandbox) -> None:
    sb.files.write("/tmp/cf/a", b"x")
    with pytest.raises(Conflict, match="directory"):
        sb.files.read("/tmp/cf")
    with pytest.raises(Conflict):
        sb.files.remove("/tmp/cf")
    sb.files.remove("/tmp/cf", recursive=True)
    p = sb.processes.start(["true"])
    p.wait()
    with pytest.raises(Conflict):
        p.write_stdin("late")


def test_a_body_over_its_limit_is_limit_exceeded(sb: Sandbox) -> None:
    p = sb.processes.start(["cat"], stdin=True)
    with pytest.raises(LimitExceeded) as e:
        p.write_stdin(b"x" * ((1 << 20) + 1))
    assert e.value.status == 413 and "too large" in e.value.message
    p.kill("KILL")


def test_unreachable_daemon_is_a_transport_error() -> None:
    with Client("127.0.0.1:1") as c:
        assert not c.health()
        with pytest.raises(TransportError) as e:
            c.info()
        assert e.value.status == 0 and isinstance(e.value, EmberdError)


def test_statuses_map_to_classes() -> None:
    assert type(error_for(400, "x")) is BadRequest
    assert type(error_for(401, "missing or invalid bearer token")) is Unauthorized
    assert type(error_for(404, "sandbox not found")) is SandboxNotFound
    assert type(error_for(404, "no such route")) is NotFound
    assert type(error_for(409, "x")) is Conflict
    for status in (413, 429, 503):
        assert type(error_for(status, "x")) is LimitExceeded
    assert error_for(429, "at capacity", 2.0).retry_after == 2.0
    assert type(error_for(500, "x")) is ServerError and type(error_for(502, "x")) is ServerError
