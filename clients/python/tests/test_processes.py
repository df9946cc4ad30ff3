"""Background processes: start, list, output pages with cursors, follow, stdin, signals."""

from __future__ import annotations

from typing import List

from emberd import OutputChunk, Sandbox

COUNT = (
    "import sys\n"
    "for i in range(200):\n"
    "    print(f'line {i:03d}', flush=True)\n"
    "print('done', file=sys.stderr)\n"
)
COUNT_OUT = "".join(f"line {i:03d}\n" for i in range(200))


def test_follow_yields_output_in_order_then_the_exit(sb: Sandbox) -> None:
    p = sb.processes.start(code=COUNT)
    chunks: List[OutputChunk] = []
    with p.follow() as f:
        chunks.extend(f)
    assert f.exit is not None and f.exit.state == "exited" and f.exit.exit_code == 0
    assert b"".join(c.data for c in chunks if c.stream == "stdout").decode() == COUNT_OUT
    assert b"".join(c.data for c in chunks if c.stream == "stderr") == b"done\n"
    # The cursors are contiguous in one offset space.
    for a, b in zip(chunks, chunks[1:]):
        assert b.cursor == a.end
    assert f.cursor == f.exit.output_bytes == chunks[-1].end


def test_output_pages_with_cursors(sb: Sandbox) -> None:
    p = sb.processes.start(code=COUNT)
    info = p.wait()
    assert info.state == "exited" and info.output_bytes == len(COUNT_OUT) + len("done\n")
    cursor, out, pages = 0, b"", 0
    while True:
        page = p.output(cursor, limit=300)
        pages += 1
        out += page.stdout
        assert page.next_cursor >= cursor
        cursor = page.next_cursor
        if page.complete:
            break
    assert pages > 3 and out.decode() == COUNT_OUT
    # From a cursor in the middle: the rest only.
    mid = p.output(len("line 000\n") * 100)
    assert mid.stdout.decode() == COUNT_OUT[len("line 000\n") * 100:]


def test_follow_from_a_cursor(sb: Sandbox) -> None:
    p = sb.processes.start(["sh", "-c", "printf abcdef"])
    p.wait()
    assert b"".join(c.data for c in p.follow(cursor=2)) == b"cdef"


def test_stdin_and_eof(sb: Sandbox) -> None:
    p = sb.processes.start(["tr", "a-z", "A-Z"], stdin=True)
    p.write_stdin("hello ")
    p.write_stdin(b"world\n", eof=True)
    info = p.wait()
    assert info.exit_code == 0
    assert p.output().stdout == b"HELLO WORLD\n"


def test_kill_list_and_get(sb: Sandbox) -> None:
    p = sb.processes.start(["sleep", "600"])
    assert p.info().running
    assert p.pid in [i.pid for i in sb.processes.list()]
    sb.processes.kill(p.pid)
    info = p.wait()
    assert (info.state, info.signal, info.exit_code) == ("killed", 15, 143)
    assert sb.processes.get(p.pid).ended_at is not None


def test_env_cwd_user_and_timeout(sb: Sandbox) -> None:
    p = sb.processes.start(["sh", "-c", 'echo "$GREETING from $(pwd) as $(id -u)"'], cwd="/tmp",
                           env={"GREETING": "hi"}, user="root")
    p.wait()
    assert p.output().stdout == b"hi from /tmp as 0\n"
    t = sb.processes.start(["sleep", "600"], timeout_ms=500)
    info = t.wait()
    assert info.state == "killed" and info.timed_out


def test_a_server_answers_another_exec(sb: Sandbox) -> None:
    sb.files.write("/tmp/www/hello.txt", "served\n")
    server = sb.processes.start(["python3", "-u", "-m", "http.server", "8123", "--bind", "127.0.0.1"], cwd="/tmp/www")
    with server.follow() as f:
        for chunk in f:
            if b"Serving HTTP" in chunk.data:
                break
    r = sb.exec("import http.client\nc = http.client.HTTPConnection('127.0.0.1', 8123)\n"
                "c.request('GET', '/hello.txt')\nprint(c.getresponse().read().decode(), end='')", timeout_ms=120_000)
    assert r.stdout == "served\n"
    server.kill()
    assert server.wait().state == "killed"
    assert b"GET /hello.txt" in server.output().stderr


def test_pty_and_resize(sb: Sandbox) -> None:
    p = sb.processes.start(["sh", "-c", "tty; stty size; read line; stty size"], pty=(30, 100))
    with p.follow() as f:
        seen = b""
        for chunk in f:
            seen += chunk.data
            if b"30 100" in seen:
                break
    p.resize(40, 120)
    p.write_stdin("\n")
    info = p.wait()
    assert info.pty and info.exit_code == 0
    out = p.output().stdout.decode()
    assert "/dev/pts/" in out and "30 100" in out and "40 120" in out
