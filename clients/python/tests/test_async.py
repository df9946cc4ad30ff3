"""The async client and sandbox mirror the sync ones."""

from __future__ import annotations

import asyncio
import io
import os
from typing import AsyncIterator, List, Tuple

import pytest

from emberd import AsyncClient, AsyncSandbox, BadRequest, FileNotFound, OutputChunk, SandboxNotFound


async def test_exec_and_concurrent_execs(asb: AsyncSandbox) -> None:
    r = await asb.exec("print(6*7)")
    assert (r.stdout, r.exit_code) == ("42\n", 0)
    results = await asyncio.gather(*(asb.exec(f"print({i}*2)") for i in range(4)))
    assert [x.stdout for x in results] == [f"{i * 2}\n" for i in range(4)]


async def test_timeout_and_stdin(asb: AsyncSandbox) -> None:
    r = await asb.exec("import time; time.sleep(60)", timeout_ms=1000)
    assert r.timed_out and r.exit_code == -1
    assert (await asb.exec("print(input()[::-1])", stdin="abc\n")).stdout == "cba\n"


async def test_streamed_callbacks(asb: AsyncSandbox) -> None:
    got: List[Tuple[str, str]] = []
    r = await asb.exec(
        "import sys\nfor i in range(3):\n    print(i, flush=True)\n    print(-i, file=sys.stderr, flush=True)",
        on_stdout=lambda s: got.append(("o", s)), on_stderr=lambda s: got.append(("e", s)),
    )
    assert "".join(s for k, s in got if k == "o") == r.stdout == "0\n1\n2\n"
    assert "".join(s for k, s in got if k == "e") == r.stderr == "0\n-1\n-2\n"


async def test_files(asb: AsyncSandbox) -> None:
    await asb.files.write("/tmp/a/b.txt", "async")
    assert await asb.files.read("/tmp/a/b.txt") == b"async"
    assert [e.name for e in await asb.files.list("/tmp/a")] == ["b.txt"]
    assert await asb.files.exists("/tmp/a/b.txt")

    data = os.urandom(3 << 20)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 1 << 20):
            yield data[i:i + (1 << 20)]

    assert (await asb.files.upload("/tmp/a/big", chunks())).bytes == len(data)
    out = io.BytesIO()
    assert await asb.files.download("/tmp/a/big", out) == len(data) and out.getvalue() == data
    await asb.files.mkdir("/tmp/a/d")
    assert (await asb.files.stat("/tmp/a/d")).is_dir
    await asb.files.remove("/tmp/a", recursive=True)
    with pytest.raises(FileNotFound):
        await asb.files.read("/tmp/a/b.txt")


async def test_processes(asb: AsyncSandbox) -> None:
    p = await asb.processes.start(["sh", "-c", "echo one; echo two >&2; echo three"])
    chunks: List[OutputChunk] = []
    async with p.follow() as f:
        async for c in f:
            chunks.append(c)
    assert f.exit is not None and f.exit.exit_code == 0
    assert b"".join(c.data for c in chunks if c.stream == "stdout") == b"one\nthree\n"
    page = await p.output(cursor=0)
    assert page.complete and page.stderr == b"two\n"

    cat = await asb.processes.start(["cat"], stdin=True)
    await cat.write_stdin("piped", eof=True)
    assert (await cat.wait()).exit_code == 0
    assert (await cat.output()).stdout == b"piped"

    sleeper = await asb.processes.start(["sleep", "600"])
    assert sleeper.pid in [i.pid for i in await asb.processes.list()]
    await sleeper.kill("KILL")
    assert (await sleeper.wait()).signal == 9


async def test_errors_and_lifecycle(aclient: AsyncClient) -> None:
    with pytest.raises(SandboxNotFound):
        await AsyncSandbox.connect("sb_000000000000", client=aclient)
    with pytest.raises(BadRequest):
        await AsyncSandbox.create(pack="ruby", client=aclient)
    sb = await AsyncSandbox.create(pack="shell", client=aclient)
    again = await AsyncSandbox.connect(sb.id, client=aclient)
    assert again.pack == "shell" and (await again.info()).state == "running"
    assert sb.id in [s.id for s in await AsyncSandbox.list(aclient)]
    await sb.delete()
    with pytest.raises(SandboxNotFound):
        await again.exec("echo hi")
    async with AsyncSandbox.create(client=aclient) as s2:
        sid = s2.id
    assert sid not in [s.id for s in await aclient.list_sandboxes()]
    info = await aclient.info()
    assert "python" in info.packs
    assert "emberd_" in await aclient.metrics()
