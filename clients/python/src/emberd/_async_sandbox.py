"""``AsyncSandbox``: the async twin of :class:`emberd.Sandbox`, over an :class:`AsyncClient`."""

from __future__ import annotations

from types import TracebackType
from typing import IO, Any, Dict, Generator, List, Optional, Type, Union

from ._async_client import AsyncClient, AsyncProcessFollow, AsyncWriteData
from ._client import PtyArg
from ._errors import NotFound, SandboxNotFound
from ._http import OutputCallback
from ._types import ExecResult, FileList, FileStat, OutputPage, ProcessInfo, SandboxInfo, WriteResult


class AsyncSandbox:
    """A sandbox driven from asyncio. ``sb = await AsyncSandbox.create()`` or
    ``async with AsyncSandbox.create() as sb:`` (deleted on exit)."""

    def __init__(self, sandbox_id: str, client: Optional[AsyncClient] = None, *, pack: Optional[str] = None,
                 exec_timeout_ms: Optional[int] = None) -> None:
        self._owns_client = client is None
        self.client = client if client is not None else AsyncClient()
        self.id = sandbox_id
        self.pack = pack
        self.exec_timeout_ms = exec_timeout_ms
        self.files = AsyncFiles(self)
        self.processes = AsyncProcesses(self)

    @classmethod
    def create(
        cls,
        pack: str = "python",
        client: Optional[AsyncClient] = None,
        timeout_s: Optional[float] = None,
        memory_mib: Optional[int] = None,
        ttl_s: Optional[int] = None,
        idle_timeout_s: Optional[int] = None,
        *,
        vcpus: Optional[int] = None,
        disk_mib: Optional[int] = None,
    ) -> _Creating:
        """As :meth:`emberd.Sandbox.create`; await it, or use it in ``async with``."""
        return _Creating(cls._create(pack, client, timeout_s, memory_mib, ttl_s, idle_timeout_s, vcpus, disk_mib))

    @classmethod
    async def _create(cls, pack: str, client: Optional[AsyncClient], timeout_s: Optional[float],
                      memory_mib: Optional[int], ttl_s: Optional[int], idle_timeout_s: Optional[int],
                      vcpus: Optional[int], disk_mib: Optional[int]) -> AsyncSandbox:
        c = client if client is not None else AsyncClient()
        try:
            sid = await c.create_sandbox(pack, vcpus=vcpus, memory_mib=memory_mib, disk_mib=disk_mib,
                                         ttl_s=ttl_s, idle_timeout_s=idle_timeout_s)
        except BaseException:
            if client is None:
                await c.aclose()
            raise
        sb = cls(sid, c, pack=pack, exec_timeout_ms=int(timeout_s * 1000) if timeout_s is not None else None)
        sb._owns_client = client is None
        return sb

    @classmethod
    async def connect(cls, sandbox_id: str, client: Optional[AsyncClient] = None) -> AsyncSandbox:
        c = client if client is not None else AsyncClient()
        try:
            info = await c.get_sandbox(sandbox_id)
        except BaseException:
            if client is None:
                await c.aclose()
            raise
        sb = cls(sandbox_id, c, pack=info.pack)
        sb._owns_client = client is None
        return sb

    @staticmethod
    async def list(client: Optional[AsyncClient] = None) -> List[SandboxInfo]:
        if client is not None:
            return await client.list_sandboxes()
        async with AsyncClient() as c:
            return await c.list_sandboxes()

    async def info(self) -> SandboxInfo:
        return await self.client.get_sandbox(self.id)

    async def exec(
        self,
        code: str,
        stdin: Optional[str] = None,
        timeout_ms: Optional[int] = None,
        user: Optional[str] = None,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
    ) -> ExecResult:
        return await self.client.exec(self.id, code, stdin=stdin,
                                      timeout_ms=timeout_ms if timeout_ms is not None else self.exec_timeout_ms,
                                      user=user, on_stdout=on_stdout, on_stderr=on_stderr)

    async def delete(self) -> None:
        try:
            await self.client.delete_sandbox(self.id)
        finally:
            await self.close()

    async def close(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, t: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        try:
            await self.delete()
        except SandboxNotFound:
            pass

    def __repr__(self) -> str:
        return f"AsyncSandbox(id={self.id!r}, pack={self.pack!r})"


class _Creating:
    """What :meth:`AsyncSandbox.create` returns: awaitable, and an async context manager
    that deletes the sandbox on exit."""

    def __init__(self, coro: Any) -> None:
        self._coro = coro
        self._sb: Optional[AsyncSandbox] = None

    def __await__(self) -> Generator[Any, None, AsyncSandbox]:
        sb: AsyncSandbox = yield from self._coro.__await__()
        return sb

    async def __aenter__(self) -> AsyncSandbox:
        self._sb = await self._coro
        return self._sb

    async def __aexit__(self, t: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        if self._sb is not None:
            await self._sb.__aexit__(t, e, tb)


class AsyncFiles:
    """``sb.files`` of an :class:`AsyncSandbox`."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sb = sandbox

    async def write(self, path: str, data: AsyncWriteData, *, mkdir: bool = True, mode: Optional[int] = None,
                    user: Optional[str] = None) -> WriteResult:
        return await self._sb.client.write_file(self._sb.id, path, data, mkdir=mkdir, mode=mode, user=user)

    async def read(self, path: str) -> bytes:
        return await self._sb.client.read_file(self._sb.id, path)

    async def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return (await self.read(path)).decode(encoding)

    async def upload(self, path: str, fileobj: AsyncWriteData, *, mode: Optional[int] = None,
                     user: Optional[str] = None) -> WriteResult:
        return await self.write(path, fileobj, mode=mode, user=user)

    async def download(self, path: str, fileobj: IO[bytes]) -> int:
        return await self._sb.client.download_file(self._sb.id, path, fileobj)

    async def upload_tar(self, path: str, data: AsyncWriteData, *, user: Optional[str] = None) -> WriteResult:
        return await self._sb.client.upload_tar(self._sb.id, path, data, user=user)

    async def download_tar(self, path: str, fileobj: IO[bytes]) -> int:
        return await self._sb.client.download_file(self._sb.id, path, fileobj, tar=True)

    async def list(self, path: str, depth: int = 1) -> FileList:
        return await self._sb.client.list_files(self._sb.id, path, depth=depth)

    async def stat(self, path: str) -> FileStat:
        return await self._sb.client.stat_file(self._sb.id, path)

    async def exists(self, path: str) -> bool:
        try:
            await self.stat(path)
            return True
        except NotFound:
            return False

    async def remove(self, path: str, recursive: bool = False) -> None:
        await self._sb.client.remove_file(self._sb.id, path, recursive=recursive)

    async def mkdir(self, path: str, *, user: Optional[str] = None) -> None:
        await self._sb.client.mkdir(self._sb.id, path, user=user)


class AsyncProcesses:
    """``sb.processes`` of an :class:`AsyncSandbox`."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sb = sandbox

    async def start(self, cmd: Optional[List[str]] = None, cwd: Optional[str] = None,
                    env: Optional[Dict[str, str]] = None, pty: PtyArg = None, *, code: Optional[str] = None,
                    stdin: bool = False, timeout_ms: Optional[int] = None, user: Optional[str] = None) -> AsyncProcess:
        pid = await self._sb.client.start_process(self._sb.id, cmd, code=code, cwd=cwd, env=env, stdin=stdin,
                                                  pty=pty, timeout_ms=timeout_ms, user=user)
        return AsyncProcess(self._sb, pid)

    async def list(self) -> List[ProcessInfo]:
        return await self._sb.client.list_processes(self._sb.id)

    async def get(self, pid: int) -> ProcessInfo:
        return await self._sb.client.get_process(self._sb.id, pid)

    async def kill(self, pid: int, signal: Union[str, int] = "TERM") -> None:
        await self._sb.client.signal_process(self._sb.id, pid, signal)

    signal = kill

    async def write_stdin(self, pid: int, data: Union[bytes, str], eof: bool = False) -> None:
        await self._sb.client.write_stdin(self._sb.id, pid, data, eof=eof)

    async def close_stdin(self, pid: int) -> None:
        await self._sb.client.write_stdin(self._sb.id, pid, b"", eof=True)

    async def resize(self, pid: int, rows: int, cols: int) -> None:
        await self._sb.client.resize_process(self._sb.id, pid, rows, cols)

    async def output(self, pid: int, cursor: int = 0, limit: Optional[int] = None) -> OutputPage:
        return await self._sb.client.process_output(self._sb.id, pid, cursor, limit=limit)

    def follow(self, pid: int, cursor: int = 0) -> AsyncProcessFollow:
        return self._sb.client.follow_output(self._sb.id, pid, cursor)

    async def wait(self, pid: int) -> ProcessInfo:
        info = await self.get(pid)
        if not info.running:
            return info
        async with self.follow(pid, cursor=info.output_bytes) as f:
            return await f.wait()


class AsyncProcess:
    """A handle on one background process of an :class:`AsyncSandbox`."""

    def __init__(self, sandbox: AsyncSandbox, pid: int) -> None:
        self.sandbox = sandbox
        self.pid = pid

    async def info(self) -> ProcessInfo:
        return await self.sandbox.processes.get(self.pid)

    async def kill(self, signal: Union[str, int] = "TERM") -> None:
        await self.sandbox.processes.kill(self.pid, signal)

    async def write_stdin(self, data: Union[bytes, str], eof: bool = False) -> None:
        await self.sandbox.processes.write_stdin(self.pid, data, eof)

    async def close_stdin(self) -> None:
        await self.sandbox.processes.close_stdin(self.pid)

    async def resize(self, rows: int, cols: int) -> None:
        await self.sandbox.processes.resize(self.pid, rows, cols)

    async def output(self, cursor: int = 0, limit: Optional[int] = None) -> OutputPage:
        return await self.sandbox.processes.output(self.pid, cursor, limit)

    def follow(self, cursor: int = 0) -> AsyncProcessFollow:
        return self.sandbox.processes.follow(self.pid, cursor)

    async def wait(self) -> ProcessInfo:
        return await self.sandbox.processes.wait(self.pid)

    def __repr__(self) -> str:
        return f"AsyncProcess(pid={self.pid}, sandbox={self.sandbox.id!r})"
