"""The asynchronous client: :class:`emberd.Client`'s methods as coroutines, over
``httpx.AsyncClient``. Same routes, results and exceptions."""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import IO, Any, AsyncIterable, AsyncIterator, Dict, Iterable, List, Optional, Type, Union

import httpx

from . import _http as h
from ._client import CHUNK, PtyArg, _checked_length, _sb
from ._errors import StreamError
from ._tar import EMPTY_TAR
from ._types import (
    ExecResult,
    FileEntry,
    FileList,
    FileStat,
    Info,
    OutputChunk,
    OutputPage,
    ProcessInfo,
    SandboxInfo,
    WriteResult,
)

#: What an async file write accepts: as for the sync client, plus async iterables of chunks.
AsyncWriteData = Union[bytes, str, IO[bytes], Iterable[bytes], AsyncIterable[bytes]]


class AsyncClient:
    """The async twin of :class:`emberd.Client` (same arguments)."""

    def __init__(self, addr: Optional[str] = None, token: Optional[str] = None, *, timeout_s: float = h.DEFAULT_TIMEOUT_S) -> None:
        self.base_url = h.base_url(addr)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=h.headers(token), timeout=h.timeout(timeout_s))

    async def aclose(self) -> None:
        await self._http.aclose()

    close = aclose

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, t: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        await self.aclose()

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = await self._http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise h.transport_error(e, self.base_url + path) from e
        return h.check(resp)

    @contextlib.asynccontextmanager
    async def _stream(self, method: str, path: str, **kw: Any) -> AsyncIterator[httpx.Response]:
        try:
            async with self._http.stream(method, path, **kw) as resp:
                if resp.status_code >= 400:
                    raise h.error_from(resp, await resp.aread())
                yield resp
        except httpx.HTTPError as e:
            raise h.transport_error(e, self.base_url + path) from e

    async def _events(self, resp: httpx.Response) -> AsyncIterator[h.Event]:
        parser = h.SSEParser()
        async for line in resp.aiter_lines():
            ev = parser.feed(line)
            if ev is not None:
                yield ev

    async def health(self) -> bool:
        try:
            return (await self._http.get("/healthz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def info(self) -> Info:
        return Info.from_json((await self._request("GET", "/info")).json())

    async def metrics(self) -> str:
        return (await self._request("GET", "/metrics")).text

    async def create_sandbox(
        self,
        pack: str = "python",
        *,
        vcpus: Optional[int] = None,
        memory_mib: Optional[int] = None,
        disk_mib: Optional[int] = None,
        ttl_s: Optional[int] = None,
        idle_timeout_s: Optional[int] = None,
    ) -> str:
        body = h.drop_none({"language_pack": pack, "vcpus": vcpus, "memory_mib": memory_mib,
                            "disk_mib": disk_mib, "ttl_s": ttl_s, "idle_timeout_s": idle_timeout_s})
        return str((await self._request("POST", "/sandboxes", json=body)).json()["id"])

    async def list_sandboxes(self) -> List[SandboxInfo]:
        return [SandboxInfo.from_json(s) for s in (await self._request("GET", "/sandboxes")).json()["sandboxes"]]

    async def get_sandbox(self, sandbox_id: str) -> SandboxInfo:
        return SandboxInfo.from_json((await self._request("GET", _sb(sandbox_id))).json())

    async def delete_sandbox(self, sandbox_id: str) -> None:
        await self._request("DELETE", _sb(sandbox_id))

    async def exec(
        self,
        sandbox_id: str,
        code: str,
        *,
        stdin: Optional[str] = None,
        timeout_ms: Optional[int] = None,
        user: Optional[str] = None,
        on_stdout: Optional[h.OutputCallback] = None,
        on_stderr: Optional[h.OutputCallback] = None,
    ) -> ExecResult:
        """As :meth:`emberd.Client.exec`; the callbacks are plain (not async) functions."""
        body = h.exec_body(code, stdin, timeout_ms, user)
        path = _sb(sandbox_id) + "/exec"
        if on_stdout is None and on_stderr is None:
            resp = await self._request("POST", path, json=body, timeout=h.exec_timeout(timeout_ms))
            return ExecResult.from_json(resp.json())
        collector = h.ExecCollector(on_stdout, on_stderr)
        async with self._stream("POST", path, json=body, headers={"Accept": "text/event-stream"},
                                timeout=h.exec_timeout(timeout_ms)) as resp:
            async for ev in self._events(resp):
                collector.on_event(ev)
                if collector.result is not None:
                    break
        return collector.finish()

    async def start_process(
        self,
        sandbox_id: str,
        cmd: Optional[List[str]] = None,
        *,
        code: Optional[str] = None,
        cwd: Optional[str] = None,
        env: Optional[Dict[str, str]] = None,
        stdin: bool = False,
        pty: PtyArg = None,
        timeout_ms: Optional[int] = None,
        user: Optional[str] = None,
    ) -> int:
        body = h.process_body(cmd, code, cwd, env, stdin, pty, timeout_ms, user)
        return int((await self._request("POST", _sb(sandbox_id) + "/processes", json=body)).json()["pid"])

    async def list_processes(self, sandbox_id: str) -> List[ProcessInfo]:
        d = (await self._request("GET", _sb(sandbox_id) + "/processes")).json()
        return [ProcessInfo.from_json(p) for p in d["processes"]]

    async def get_process(self, sandbox_id: str, pid: int) -> ProcessInfo:
        return ProcessInfo.from_json((await self._request("GET", f"{_sb(sandbox_id)}/processes/{pid}")).json())

    async def signal_process(self, sandbox_id: str, pid: int, signal: Union[str, int] = "TERM") -> None:
        await self._request("POST", f"{_sb(sandbox_id)}/processes/{pid}/signal", json={"signal": str(signal)})

    async def write_stdin(self, sandbox_id: str, pid: int, data: Union[bytes, str], *, eof: bool = False) -> None:
        content = data.encode("utf-8") if isinstance(data, str) else data
        params = {"eof": "true"} if eof else None
        await self._request("POST", f"{_sb(sandbox_id)}/processes/{pid}/stdin", content=content, params=params)

    async def resize_process(self, sandbox_id: str, pid: int, rows: int, cols: int) -> None:
        await self._request("POST", f"{_sb(sandbox_id)}/processes/{pid}/resize", json={"rows": rows, "cols": cols})

    async def process_output(self, sandbox_id: str, pid: int, cursor: int = 0, *, limit: Optional[int] = None) -> OutputPage:
        params = h.drop_none({"cursor": cursor, "limit": limit})
        resp = await self._request("GET", f"{_sb(sandbox_id)}/processes/{pid}/output", params=params)
        return OutputPage.from_json(resp.json())

    def follow_output(self, sandbox_id: str, pid: int, cursor: int = 0) -> AsyncProcessFollow:
        return AsyncProcessFollow(self, sandbox_id, pid, cursor)

    async def write_file(
        self,
        sandbox_id: str,
        path: str,
        data: AsyncWriteData,
        *,
        mkdir: bool = True,
        mode: Optional[int] = None,
        user: Optional[str] = None,
    ) -> WriteResult:
        params = h.drop_none({"path": path, "mkdir": "true" if mkdir else None,
                              "mode": f"{mode:04o}" if mode is not None else None, "user": user})
        resp = await self._request("PUT", _sb(sandbox_id) + "/files", params=params, content=_acontent(data))
        return WriteResult.from_json(resp.json())

    async def upload_tar(self, sandbox_id: str, path: str, data: AsyncWriteData, *, user: Optional[str] = None) -> WriteResult:
        params = h.drop_none({"path": path, "user": user})
        resp = await self._request("PUT", _sb(sandbox_id) + "/files", params=params, content=_acontent(data),
                                   headers={"Content-Type": "application/x-tar"})
        return WriteResult.from_json(resp.json())

    async def mkdir(self, sandbox_id: str, path: str, *, user: Optional[str] = None) -> None:
        await self.upload_tar(sandbox_id, path, EMPTY_TAR, user=user)

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        async with self._stream("GET", _sb(sandbox_id) + "/files", params={"path": path}, timeout=h.STREAM_TIMEOUT) as resp:
            return _checked_length(resp, await resp.aread())

    async def iter_file(self, sandbox_id: str, path: str, *, tar: bool = False, chunk_size: int = CHUNK) -> AsyncIterator[bytes]:
        params = {"path": path, **({"format": "tar"} if tar else {})}
        async with self._stream("GET", _sb(sandbox_id) + "/files", params=params, timeout=h.STREAM_TIMEOUT) as resp:
            got = 0
            async for chunk in resp.aiter_bytes(chunk_size):
                got += len(chunk)
                yield chunk
            _checked_length(resp, b"", got)

    async def download_file(self, sandbox_id: str, path: str, fileobj: IO[bytes], *, tar: bool = False) -> int:
        n = 0
        async for chunk in self.iter_file(sandbox_id, path, tar=tar):
            fileobj.write(chunk)
            n += len(chunk)
        return n

    async def stat_file(self, sandbox_id: str, path: str) -> FileStat:
        resp = await self._request("HEAD", _sb(sandbox_id) + "/files", params={"path": path})
        return FileStat(path=path, type=resp.headers.get("x-emberd-kind", ""),
                        size=int(resp.headers.get("content-length", "0")),
                        mode=resp.headers.get("x-emberd-mode", ""), mtime=resp.headers.get("x-emberd-mtime", ""))

    async def list_files(self, sandbox_id: str, path: str, *, depth: int = 1) -> FileList:
        d = (await self._request("GET", _sb(sandbox_id) + "/files/list", params={"path": path, "depth": depth})).json()
        out = FileList(FileEntry.from_json(e) for e in d.get("entries", []))
        out.truncated = bool(d.get("truncated", False))
        return out

    async def remove_file(self, sandbox_id: str, path: str, *, recursive: bool = False) -> None:
        params = {"path": path, **({"recursive": "true"} if recursive else {})}
        await self._request("DELETE", _sb(sandbox_id) + "/files", params=params)


def _acontent(data: AsyncWriteData) -> Union[bytes, AsyncIterable[bytes]]:
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if hasattr(data, "__aiter__"):
        return data  # type: ignore[return-value]
    if hasattr(data, "read"):
        f: IO[bytes] = data  # type: ignore[assignment]
        chunks: Iterable[bytes] = iter(lambda: f.read(CHUNK), b"")
    else:
        chunks = data

    async def gen() -> AsyncIterator[bytes]:
        for c in chunks:
            yield c

    return gen()


class AsyncProcessFollow:
    """The async twin of :class:`emberd.ProcessFollow`: ``async for chunk in follow``."""

    def __init__(self, client: AsyncClient, sandbox_id: str, pid: int, cursor: int) -> None:
        self._client, self._sandbox_id, self._pid = client, sandbox_id, pid
        self._state = h.FollowState(cursor)
        self._gen: Optional[AsyncIterator[OutputChunk]] = None

    @property
    def cursor(self) -> int:
        return self._state.cursor

    @property
    def dropped(self) -> int:
        return self._state.dropped

    @property
    def exit(self) -> Optional[ProcessInfo]:
        return self._state.exit

    async def _run(self) -> AsyncIterator[OutputChunk]:
        params = {"follow": "true", "cursor": self._state.cursor}
        path = f"{_sb(self._sandbox_id)}/processes/{self._pid}/output"
        async with self._client._stream("GET", path, params=params, timeout=h.STREAM_TIMEOUT) as resp:
            async for ev in self._client._events(resp):
                chunk = self._state.on_event(ev)
                if chunk is not None:
                    yield chunk
                if self._state.exit is not None:
                    return
        raise StreamError(0, "the output stream ended before the process did")

    def __aiter__(self) -> AsyncIterator[OutputChunk]:
        if self._gen is None:
            self._gen = self._run()
        return self._gen

    async def wait(self) -> ProcessInfo:
        async for _ in self:
            pass
        assert self._state.exit is not None
        return self._state.exit

    async def aclose(self) -> None:
        if self._gen is not None and hasattr(self._gen, "aclose"):
            await self._gen.aclose()

    async def __aenter__(self) -> AsyncProcessFollow:
        return self

    async def __aexit__(self, t: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        await self.aclose()
