"""The MCP tools through a real MCP client (the `mcp` package), against a real daemon.

Every test runs twice: over stdio (spawning `emberd mcp --addr $EMBERD_ADDR`, a client of
the daemon) and over streamable HTTP (the daemon's own `/mcp`). Run with
`scripts/with-daemon.py -- python -m pytest crates/emberd/tests/mcp` (`make test-mcp`).
"""

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client
from mcp.types import CallToolResult, TextContent

ADDR = os.environ["EMBERD_ADDR"]
REPO = Path(__file__).resolve().parents[4]
EMBERD = os.environ.get("EMBERD_BIN", str(REPO / "target/release/emberd"))
TOOLS = {"create_sandbox", "exec_code", "delete_sandbox", "run_code", "read_file", "write_file", "list_files"}

pytestmark = [pytest.mark.asyncio, pytest.mark.parametrize("transport", ["stdio", "http"])]


@asynccontextmanager
async def session(transport: str) -> AsyncIterator[ClientSession]:
    """An initialized MCP session over `transport`."""
    if transport == "stdio":
        params = StdioServerParameters(command=EMBERD, args=["mcp", "--addr", ADDR], env=dict(os.environ))
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as s:
                await s.initialize()
                yield s
    else:
        async with streamablehttp_client(f"http://{ADDR}/mcp") as (read, write, _):
            async with ClientSession(read, write) as s:
                await s.initialize()
                yield s


def text(result: CallToolResult) -> str:
    assert result.content and isinstance(result.content[0], TextContent), result
    return result.content[0].text


async def ok(s: ClientSession, tool: str, **args: Any) -> dict[str, Any]:
    """Calls `tool`, which must succeed; its structured content (also its text, as JSON)."""
    result = await s.call_tool(tool, args)
    assert not result.isError, f"{tool} failed: {text(result)}"
    assert result.structuredContent is not None
    assert json.loads(text(result)) == result.structuredContent
    return result.structuredContent


async def fails(s: ClientSession, tool: str, **args: Any) -> str:
    """Calls `tool`, which must answer a tool error (not a protocol error); its message."""
    result = await s.call_tool(tool, args)
    assert result.isError, f"{tool} should have failed: {result}"
    assert result.structuredContent == {"error": text(result)}
    return text(result)


def api_error(method: str, path: str) -> str:
    """What the HTTP API answers for the same mistake."""
    response = httpx.request(method, f"http://{ADDR}{path}")
    assert response.status_code >= 400
    return str(response.json()["error"])


def sandbox_ids() -> set[str]:
    return {s["id"] for s in httpx.get(f"http://{ADDR}/sandboxes").json()["sandboxes"]}


async def test_the_tools_are_listed_with_truthful_descriptions(transport: str) -> None:
    async with session(transport) as s:
        tools = {t.name: t for t in (await s.list_tools()).tools}
        assert set(tools) == TOOLS
        exec_code = tools["exec_code"]
        assert set(exec_code.inputSchema["properties"]) == {"sandbox_id", "code", "stdin", "timeout_ms"}
        assert set(exec_code.inputSchema["required"]) == {"sandbox_id", "code"}
        assert "not persist" in (exec_code.description or "").lower()
        assert set(tools["create_sandbox"].inputSchema["properties"]) == {"language_pack"}
        assert set(tools["delete_sandbox"].inputSchema["required"]) == {"sandbox_id"}
        assert "idle timeout" in (tools["create_sandbox"].description or "")


async def test_create_exec_delete_keep_the_apis_shapes(transport: str) -> None:
    async with session(transport) as s:
        created = await ok(s, "create_sandbox", language_pack="python")
        assert set(created) == {"id"}
        sid = created["id"]
        try:
            r = await ok(s, "exec_code", sandbox_id=sid, code="import sys\nprint(6*7)\nprint(sys.stdin.read())", stdin="in")
            assert r["stdout"] == "42\nin\n" and r["exit_code"] == 0 and "duration_ms" in r
            # Plain execs keep no variables, as the description says.
            await ok(s, "exec_code", sandbox_id=sid, code="x = 1")
            r = await ok(s, "exec_code", sandbox_id=sid, code="print(x)")
            assert r["exit_code"] == 1 and "NameError" in r["stderr"]
            r = await ok(s, "exec_code", sandbox_id=sid, code="import time\ntime.sleep(30)", timeout_ms=500)
            assert r["exit_code"] == -1 and r["error"] == "execution timed out"
        finally:
            assert await ok(s, "delete_sandbox", sandbox_id=sid) == {"id": sid, "deleted": True}
        assert sid not in sandbox_ids()
        message = await fails(s, "exec_code", sandbox_id=sid, code="print(1)")
        assert message == api_error("GET", f"/sandboxes/{sid}") == "sandbox not found"


async def test_api_errors_become_tool_errors_with_the_apis_message(transport: str) -> None:
    async with session(transport) as s:
        assert await fails(s, "delete_sandbox", sandbox_id="sb_nope") == api_error("DELETE", "/sandboxes/sb_nope")
        assert await fails(s, "read_file", sandbox_id="sb_nope", path="/etc/hostname") == "sandbox not found"
        assert await fails(s, "list_files", sandbox_id="sb_nope") == "sandbox not found"
        unknown = await fails(s, "create_sandbox", language_pack="cobol")
        assert "cobol" in unknown
        # The session carries on after errors.
        assert len((await s.list_tools()).tools) == len(TOOLS)


async def test_files_persist_between_execs_and_reads_are_bounded(transport: str) -> None:
    async with session(transport) as s:
        sid = (await ok(s, "create_sandbox"))["id"]
        try:
            path = "/home/sandbox/work/notes.txt"
            written = await ok(s, "write_file", sandbox_id=sid, path=path, content="héllo\n")
            assert written == {"path": path, "bytes": len("héllo\n".encode())}
            r = await ok(s, "exec_code", sandbox_id=sid, code=f"print(open({path!r}).read().upper(), end='')")
            assert r["stdout"] == "HÉLLO\n"
            await ok(s, "exec_code", sandbox_id=sid, code="open('/home/sandbox/work/out.bin','wb').write(bytes([0, 255, 1]))")
            assert await ok(s, "read_file", sandbox_id=sid, path=path) == {
                "path": path, "size": 7, "encoding": "utf-8", "content": "héllo\n"}
            binary = await ok(s, "read_file", sandbox_id=sid, path="/home/sandbox/work/out.bin")
            assert binary["encoding"] == "base64" and binary["content"] == "AP8B"
            await ok(s, "write_file", sandbox_id=sid, path="/home/sandbox/b64.bin", content="AP8B", encoding="base64")
            r = await ok(s, "exec_code", sandbox_id=sid, code="print(list(open('/home/sandbox/b64.bin','rb').read()))")
            assert r["stdout"] == "[0, 255, 1]\n"

            listing = await ok(s, "list_files", sandbox_id=sid, path="/home/sandbox", depth=2)
            entries = {e["path"]: e for e in listing["entries"]}
            assert entries["/home/sandbox/work"]["type"] == "dir"
            assert entries[path]["size"] == 7 and entries[path]["mode"] == "0644"
            default = await ok(s, "list_files", sandbox_id=sid)
            assert "/home/sandbox/work" in {e["path"] for e in default["entries"]}
            assert path not in {e["path"] for e in default["entries"]}

            await ok(s, "exec_code", sandbox_id=sid, code="open('/home/sandbox/big','wb').write(b'x' * (2 << 20))")
            too_big = await fails(s, "read_file", sandbox_id=sid, path="/home/sandbox/big")
            assert "2097152 bytes" in too_big and "at most 1048576" in too_big
            missing = await fails(s, "read_file", sandbox_id=sid, path="/home/sandbox/nope")
            assert missing == api_error("GET", f"/sandboxes/{sid}/files?path=/home/sandbox/nope")
            relative = await fails(s, "write_file", sandbox_id=sid, path="relative", content="x")
            assert relative == api_error("PUT", f"/sandboxes/{sid}/files?path=relative")
            assert "absolute" in relative
        finally:
            await ok(s, "delete_sandbox", sandbox_id=sid)


async def test_run_code_deletes_its_sandbox_even_when_the_run_fails(transport: str) -> None:
    async with session(transport) as s:
        before = sandbox_ids()
        r = await ok(s, "run_code", code="print(sum(range(10)))")
        assert r["stdout"] == "45\n" and r["exit_code"] == 0
        r = await ok(s, "run_code", code="echo $((6*7)); exit 3", language_pack="shell")
        assert r["stdout"] == "42\n" and r["exit_code"] == 3
        r = await ok(s, "run_code", code="import time\ntime.sleep(30)", timeout_ms=300)
        assert r["exit_code"] == -1 and r["error"] == "execution timed out"
        assert "cobol" in await fails(s, "run_code", code="x", language_pack="cobol")
        assert sandbox_ids() == before
