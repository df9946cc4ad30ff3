"""Exec: results, exit codes, stdin, users, timeouts, output caps and streamed output."""

from __future__ import annotations

from typing import List, Tuple

from emberd import Client, Sandbox


def test_exec_returns_output_and_exit_code(sb: Sandbox) -> None:
    r = sb.exec("import sys\nprint(6*7)\nprint('oops', file=sys.stderr)")
    assert (r.stdout, r.stderr, r.exit_code, r.error) == ("42\n", "oops\n", 0, None)
    assert r.ok and not r.timed_out
    assert r.duration_ms >= 0 and r.duration_us is not None and r.vm_duration_us is not None


def test_nonzero_exit_and_exception_are_results(sb: Sandbox) -> None:
    r = sb.exec("import sys; sys.exit(3)")
    assert r.exit_code == 3 and r.error is None and not r.ok
    r = sb.exec("raise ValueError('boom')")
    assert r.exit_code == 1 and "ValueError: boom" in r.stderr


def test_stdin_reaches_the_program(sb: Sandbox) -> None:
    r = sb.exec("import sys\nprint(sys.stdin.read().upper(), end='')", stdin="hello\nworld\n")
    assert r.stdout == "HELLO\nWORLD\n"


def test_users(sb: Sandbox) -> None:
    assert sb.exec("import os; print(os.getuid())").stdout == "1000\n"
    assert sb.exec("import os; print(os.getuid())", user="root").stdout == "0\n"


def test_timeout_is_a_result_with_error_and_keeps_earlier_output(sb: Sandbox) -> None:
    r = sb.exec("import time\nprint('started', flush=True)\ntime.sleep(60)", timeout_ms=1000)
    assert r.exit_code == -1
    assert r.error == "execution timed out" and r.timed_out
    assert r.stdout == "started\n"


def test_sandbox_default_timeout_applies(client: Client) -> None:
    with Sandbox.create(client=client, timeout_s=1) as s:
        assert s.exec_timeout_ms == 1000
        assert s.exec("import time; time.sleep(60)").timed_out


def test_output_over_the_cap_is_truncated(sb: Sandbox) -> None:
    r = sb.exec("import sys\nsys.stdout.write('x' * (5 << 20))")
    assert r.stdout_truncated and not r.stderr_truncated
    assert 0 < len(r.stdout) <= 4 << 20


def test_streamed_callbacks_get_each_stream_in_order(sb: Sandbox) -> None:
    got: List[Tuple[str, str]] = []
    code = (
        "import sys\n"
        "for i in range(5):\n"
        "    print('out', i, flush=True)\n"
        "    print('err', i, file=sys.stderr, flush=True)\n"
        "sys.exit(4)\n"
    )
    r = sb.exec(code, on_stdout=lambda s: got.append(("out", s)), on_stderr=lambda s: got.append(("err", s)))
    out = "".join(s for k, s in got if k == "out")
    err = "".join(s for k, s in got if k == "err")
    assert out == "".join(f"out {i}\n" for i in range(5))
    assert err == "".join(f"err {i}\n" for i in range(5))
    # The result carries the whole output too, and the exit status.
    assert (r.stdout, r.stderr, r.exit_code) == (out, err, 4)


def test_streamed_output_arrives_while_the_program_runs(sb: Sandbox) -> None:
    # The program waits for a file that the callback writes on seeing its first line:
    # without live streaming it would time out.
    if sb.files.exists("/tmp/go"):
        sb.files.remove("/tmp/go")

    def on_stdout(text: str) -> None:
        if "ready" in text:
            sb.files.write("/tmp/go", b"")

    code = (
        "import os, time\n"
        "print('ready', flush=True)\n"
        "while not os.path.exists('/tmp/go'):\n"
        "    time.sleep(0.02)\n"
        "print('done')\n"
    )
    r = sb.exec(code, timeout_ms=60_000, on_stdout=on_stdout)
    assert r.error is None and r.stdout == "ready\ndone\n"


def test_streamed_exec_reports_a_timeout(sb: Sandbox) -> None:
    seen: List[str] = []
    r = sb.exec("import time\nprint('a', flush=True)\ntime.sleep(60)", timeout_ms=1000, on_stdout=seen.append)
    assert r.timed_out and r.exit_code == -1 and "".join(seen) == "a\n" == r.stdout


def test_streamed_bytes_that_are_not_utf8(sb: Sandbox) -> None:
    seen: List[str] = []
    r = sb.exec("import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe end')", on_stdout=seen.append)
    assert "".join(seen) == r.stdout == "ok \ufffd\ufffd end"


def test_shell_pack(client: Client) -> None:
    with Sandbox.create(pack="shell", client=client) as s:
        r = s.exec('echo "$((6*7))"; echo err >&2; exit 5')
        assert (r.stdout, r.stderr, r.exit_code) == ("42\n", "err\n", 5)
