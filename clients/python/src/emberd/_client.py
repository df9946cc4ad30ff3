"""The synchronous client: one method per route of the daemon's HTTP API.

Owns an ``httpx.Client`` (connection pooling) and the mapping of answers to result types
and exceptions. Knows nothing of sandbox objects; :mod:`emberd._sandbox` builds on it.
"""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import IO, Any, Dict, Iterable, Iterator, List, Optional, Type, Union
from urllib.parse import quote

import httpx

from . import _http as h
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
    Pty,
    SandboxInfo,
    WriteResult,
)

#: What a file write accepts: the bytes, text (written as UTF-8), a binary file object
#: (streamed) or an iterable of byte chunks (streamed).
WriteData = Union[bytes, str, IO[bytes], Iterable[bytes]]
PtyArg = Union[Pty, tuple[int, int], bool, None]
CHUNK = 256 * 1024


def _sb(sandbox_id: str) -> str:
    return "/sandboxes/" + quote(sandbox_id, safe="")


class Client:
    """A connection to one emberd daemon.

    ``addr`` is ``host:port`` or a URL (default: ``EMBERD_ADDR``, then 127.0.0.1:7777);
    ``token`` the bearer token (default: ``EMBERD_TOKEN``); ``timeout_s`` bounds every call
    but execs (bounded by their own timeout plus a grace) and streams (unbounded reads).
    """

    def __init__(self, addr: Optional[str] = None, token: Optional[str] = None, *, timeout_s: float = h.DEFAULT_TIMEOUT_S) -> None:
        self.base_url = h.base_url(addr)
        self._http = httpx.Client(base_url=self.base_url, headers=h.headers(token), timeout=h.timeout(timeout_s))

    # -- plumbing ---------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, t: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise h.transport_error(e, self.base_url + path) from e
        return h.check(resp)

    @contextlib.contextmanager
    def _stream(self, method: str, path: str, **kw: Any) -> Iterator[httpx.Response]:
        try:
            with self._http.stream(method, path, **kw) as resp:
                if resp.status_code >= 400:
                    raise h.error_from(resp, resp.read())
                yield resp
        except httpx.HTTPError as e:
            raise h.transport_error(e, self.base_url + path) from e

    def _events(self, resp: httpx.Response) -> Iterator[h.Event]:
        parser = h.SSEParser()
        for line in resp.iter_lines():
            ev = parser.feed(line)
            if ev is not None:
                yield ev

    # -- daemon -----------------------------------------------------------------------

    def health(self) -> bool:
        """True when ``GET /healthz`` answers 200."""
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def info(self) -> Info:
        return Info.from_json(self._request("GET", "/info").json())

    def metrics(self) -> str:
        """The Prometheus metrics, as OpenMetrics text."""
        return self._request("GET", "/metrics").text

    # -- sandboxes --------------------------------------------------------------------

    def create_sandbox(
        self,
        pack: str = "python",
        *,
        vcpus: Optional[int] = None,
        memory_mib: Optional[int] = None,
        disk_mib: Optional[int] = None,
        ttl_s: Optional[int] = None,
        idle_timeout_s: Optional[int] = None,
    ) -> str:
        """Creates a sandbox and returns its id once its agent answers."""
        body = h.drop_none({"language_pack": pack, "vcpus": vcpus, "memory_mib": memory_mib,
                            "disk_mib": disk_mib, "ttl_s": ttl_s, "idle_timeout_s": idle_timeout_s})
        return str(self._request("POST", "/sandboxes", json=body).json()["id"])

    def list_sandboxes(self) -> List[SandboxInfo]:
        return [SandboxInfo.from_json(s) for s in self._request("GET", "/sandboxes").json()["sandboxes"]]

    def get_sandbox(self, sandbox_id: str) -> SandboxInfo:
        return SandboxInfo.from_json(self._request("GET", _sb(sandbox_id)).json())

    def delete_sandbox(self, sandbox_id: str) -> None:
        self._request("DELETE", _sb(sandbox_id))

    def exec(
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
        """Runs ``code`` with the pack's interpreter. With ``on_stdout``/``on_stderr`` the
        output is streamed (Server-Sent Events) and each piece handed to its callback, in
        the order the program wrote it; the result holds the whole output either way."""
        body = h.exec_body(code, stdin, timeout_ms, user)
        path = _sb(sandbox_id) + "/exec"
        if on_stdout is None and on_stderr is None:
            return ExecResult.from_json(self._request("POST", path, json=body, timeout=h.exec_timeout(timeout_ms)).json())
        collector = h.ExecCollector(on_stdout, on_stderr)
        with self._stream("POST", path, json=body, headers={"Accept": "text/event-stream"},
                          timeout=h.exec_timeout(timeout_ms)) as resp:
            for ev in self._events(resp):
                collector.on_event(ev)
                if collector.result is not None:
                    break
        return collector.finish()

    # -- processes --------------------------------------------------------------------

    def start_process(
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
        """Starts a background process (``cmd`` argv, or ``code`` for the pack's
        interpreter) and returns its pid."""
        body = h.process_body(cmd, code, cwd, env, stdin, pty, timeout_ms, user)
        return int(self._request("POST", _sb(sandbox_id) + "/processes", json=body).json()["pid"])

    def list_processes(self, sandbox_id: str) -> List[ProcessInfo]:
        return [ProcessInfo.from_json(p) for p in self._request("GET", _sb(sandbox_id) + "/processes").json()["processes"]]

    def get_process(self, sandbox_id: str, pid: int) -> ProcessInfo:
        return ProcessInfo.from_json(self._request("GET", f"{_sb(sandbox_id)}/processes/{pid}").json())

    def signal_process(self, sandbox_id: str, pid: int, signal: Union[str, int] = "TERM") -> None:
        self._request("POST", f"{_sb(sandbox_id)}/processes/{pid}/signal", json={"signal": str(signal)})

    def write_stdin(self, sandbox_id: str, pid: int, data: Union[bytes, str], *, eof: bool = False) -> None:
        """Sends ``data`` (at most 1 MiB a call) to the process's stdin; ``eof`` then closes it."""
        content = data.encode("utf-8") if isinstance(data, str) else data
        params = {"eof": "true"} if eof else None
        self._request("POST", f"{_sb(sandbox_id)}/processes/{pid}/stdin", content=content, params=params)

    def resize_process(self, sandbox_id: str, pid: int, rows: int, cols: int) -> None:
        self._request("POST", f"{_sb(sandbox_id)}/processes/{pid}/resize", json={"rows": rows, "cols": cols})

    def process_output(self, sandbox_id: str, pid: int, cursor: int = 0, *, limit: Optional[int] = None) -> OutputPage:
        params = h.drop_none({"cursor": cursor, "limit": limit})
        return OutputPage.from_json(self._request("GET", f"{_sb(sandbox_id)}/processes/{pid}/output", params=params).json())

    def follow_output(self, sandbox_id: str, pid: int, cursor: int = 0) -> ProcessFollow:
        """The process's output from ``cursor`` as it is written, until it ends."""
        return ProcessFollow(self, sandbox_id, pid, cursor)

    # -- files ------------------------------------------------------------------------

    def write_file(
        self,
        sandbox_id: str,
        path: str,
        data: WriteData,
        *,
        mkdir: bool = True,
        mode: Optional[int] = None,
        user: Optional[str] = None,
    ) -> WriteResult:
        """Writes a file (atomically: a failed write leaves nothing). File objects and
        iterables are streamed. ``mode`` is permission bits (e.g. ``0o755``); ``mkdir``
        makes missing parent directories."""
        params = h.drop_none({"path": path, "mkdir": "true" if mkdir else None,
                              "mode": f"{mode:04o}" if mode is not None else None, "user": user})
        content = _content(data)
        return WriteResult.from_json(self._request("PUT", _sb(sandbox_id) + "/files", params=params, content=content).json())

    def upload_tar(self, sandbox_id: str, path: str, data: WriteData, *, user: Optional[str] = None) -> WriteResult:
        """Unpacks a tar stream into the directory ``path`` (made when missing)."""
        params = h.drop_none({"path": path, "user": user})
        return WriteResult.from_json(self._request(
            "PUT", _sb(sandbox_id) + "/files", params=params, content=_content(data),
            headers={"Content-Type": "application/x-tar"}).json())

    def mkdir(self, sandbox_id: str, path: str, *, user: Optional[str] = None) -> None:
        """Makes a directory and its parents (an empty tar unpacked there)."""
        self.upload_tar(sandbox_id, path, EMPTY_TAR, user=user)

    def read_file(self, sandbox_id: str, path: str) -> bytes:
        with self._stream("GET", _sb(sandbox_id) + "/files", params={"path": path}, timeout=h.STREAM_TIMEOUT) as resp:
            return _checked_length(resp, resp.read())

    def iter_file(self, sandbox_id: str, path: str, *, tar: bool = False, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """The file's bytes (or, with ``tar``, the path packed as a tar stream) as they arrive."""
        params = {"path": path, **({"format": "tar"} if tar else {})}
        with self._stream("GET", _sb(sandbox_id) + "/files", params=params, timeout=h.STREAM_TIMEOUT) as resp:
            got = 0
            for chunk in resp.iter_bytes(chunk_size):
                got += len(chunk)
                yield chunk
            _checked_length(resp, b"", got)

    def download_file(self, sandbox_id: str, path: str, fileobj: IO[bytes], *, tar: bool = False) -> int:
        """Streams the file (or a tar of the path) into ``fileobj``; returns the bytes written."""
        n = 0
        for chunk in self.iter_file(sandbox_id, path, tar=tar):
            fileobj.write(chunk)
            n += len(chunk)
        return n

    def stat_file(self, sandbox_id: str, path: str) -> FileStat:
        resp = self._request("HEAD", _sb(sandbox_id) + "/files", params={"path": path})
        return FileStat(path=path, type=resp.headers.get("x-emberd-kind", ""),
                        size=int(resp.headers.get("content-length", "0")),
                        mode=resp.headers.get("x-emberd-mode", ""), mtime=resp.headers.get("x-emberd-mtime", ""))

    def list_files(self, sandbox_id: str, path: str, *, depth: int = 1) -> FileList:
        d = self._request("GET", _sb(sandbox_id) + "/files/list", params={"path": path, "depth": depth}).json()
        out = FileList(FileEntry.from_json(e) for e in d.get("entries", []))
        out.truncated = bool(d.get("truncated", False))
        return out

    def remove_file(self, sandbox_id: str, path: str, *, recursive: bool = False) -> None:
        params = {"path": path, **({"recursive": "true"} if recursive else {})}
        self._request("DELETE", _sb(sandbox_id) + "/files", params=params)


def _content(data: WriteData) -> Union[bytes, Iterable[bytes]]:
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if hasattr(data, "read"):
        f: IO[bytes] = data  # type: ignore[assignment]
        return iter(lambda: f.read(CHUNK), b"")
    return data


def _checked_length(resp: httpx.Response, body: bytes, got: Optional[int] = None) -> bytes:
    """A download cut short (the sandbox went away meanwhile) is an error, not short data."""
    want = resp.headers.get("content-length")
    n = len(body) if got is None else got
    if want is not None and resp.request.method == "GET" and int(want) != n:
        raise StreamError(0, f"the download ended early: {n} of {want} bytes")
    return body


class ProcessFollow:
    """The output of a process as it is written: iterate for :class:`OutputChunk` s until
    the process ends. Afterwards ``exit`` holds its :class:`ProcessInfo`, ``cursor`` where
    the output ended, ``dropped`` the bytes that fell off the log before they were sent.
    Close it (or leave a ``with`` block) to stop following early."""

    def __init__(self, client: Client, sandbox_id: str, pid: int, cursor: int) -> None:
        self._client, self._sandbox_id, self._pid = client, sandbox_id, pid
        self._state = h.FollowState(cursor)
        self._gen: Optional[Iterator[OutputChunk]] = None

    @property
    def cursor(self) -> int:
        return self._state.cursor

    @property
    def dropped(self) -> int:
        return self._state.dropped

    @property
    def exit(self) -> Optional[ProcessInfo]:
        return self._state.exit

    def _run(self) -> Iterator[OutputChunk]:
        params = {"follow": "true", "cursor": self._state.cursor}
        path = f"{_sb(self._sandbox_id)}/processes/{self._pid}/output"
        with self._client._stream("GET", path, params=params, timeout=h.STREAM_TIMEOUT) as resp:
            for ev in self._client._events(resp):
                chunk = self._state.on_event(ev)
                if chunk is not None:
                    yield chunk
                if self._state.exit is not None:
                    return
        raise StreamError(0, "the output stream ended before the process did")

    def __iter__(self) -> Iterator[OutputChunk]:
        if self._gen is None:
            self._gen = self._run()
        return self._gen

    def wait(self) -> ProcessInfo:
        """Reads (and drops) the rest of the output; the process's final state."""
        for _ in self:
            pass
        assert self._state.exit is not None
        return self._state.exit

    def close(self) -> None:
        if self._gen is not None and hasattr(self._gen, "close"):
            self._gen.close()

    def __enter__(self) -> ProcessFollow:
        return self

    def __exit__(self, t: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.close()
