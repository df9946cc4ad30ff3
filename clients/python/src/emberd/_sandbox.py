"""``Sandbox``: one sandbox, with its files and processes, over a :class:`Client`."""

from __future__ import annotations

from types import TracebackType
from typing import IO, Dict, List, Optional, Type, Union

from ._client import Client, ProcessFollow, PtyArg, WriteData
from ._errors import NotFound, SandboxNotFound
from ._http import OutputCallback
from ._types import ExecResult, FileList, FileStat, OutputPage, ProcessInfo, SandboxInfo, WriteResult


class Sandbox:
    """A sandbox: a microVM running one language pack. Use it as a context manager to
    delete it on exit. Build one with :meth:`create` or :meth:`connect`."""

    def __init__(self, sandbox_id: str, client: Optional[Client] = None, *, pack: Optional[str] = None,
                 exec_timeout_ms: Optional[int] = None) -> None:
        self._owns_client = client is None
        self.client = client if client is not None else Client()
        self.id = sandbox_id
        self.pack = pack
        #: The timeout of every exec that names none (``timeout_s`` of :meth:`create`).
        self.exec_timeout_ms = exec_timeout_ms
        self.files = Files(self)
        self.processes = Processes(self)

    @classmethod
    def create(
        cls,
        pack: str = "python",
        client: Optional[Client] = None,
        timeout_s: Optional[float] = None,
        memory_mib: Optional[int] = None,
        ttl_s: Optional[int] = None,
        idle_timeout_s: Optional[int] = None,
        *,
        vcpus: Optional[int] = None,
        disk_mib: Optional[int] = None,
    ) -> Sandbox:
        """Creates a sandbox of ``pack``. ``timeout_s`` is the default timeout of its execs;
        ``ttl_s`` deletes it that long after creation, ``idle_timeout_s`` after that long
        without an exec (0: never); ``vcpus``/``memory_mib``/``disk_mib`` size its VM."""
        c = client if client is not None else Client()
        try:
            sid = c.create_sandbox(pack, vcpus=vcpus, memory_mib=memory_mib, disk_mib=disk_mib,
                                   ttl_s=ttl_s, idle_timeout_s=idle_timeout_s)
        except BaseException:
            if client is None:
                c.close()
            raise
        sb = cls(sid, c, pack=pack, exec_timeout_ms=int(timeout_s * 1000) if timeout_s is not None else None)
        sb._owns_client = client is None
        return sb

    @classmethod
    def connect(cls, sandbox_id: str, client: Optional[Client] = None) -> Sandbox:
        """A handle on an existing sandbox (checked: :class:`SandboxNotFound` if it is gone)."""
        c = client if client is not None else Client()
        try:
            info = c.get_sandbox(sandbox_id)
        except BaseException:
            if client is None:
                c.close()
            raise
        sb = cls(sandbox_id, c, pack=info.pack)
        sb._owns_client = client is None
        return sb

    @staticmethod
    def list(client: Optional[Client] = None) -> List[SandboxInfo]:
        """Every sandbox of the daemon."""
        if client is not None:
            return client.list_sandboxes()
        with Client() as c:
            return c.list_sandboxes()

    def info(self) -> SandboxInfo:
        return self.client.get_sandbox(self.id)

    def exec(
        self,
        code: str,
        stdin: Optional[str] = None,
        timeout_ms: Optional[int] = None,
        user: Optional[str] = None,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
    ) -> ExecResult:
        """Runs ``code`` with the pack's interpreter (python3, sh, node) as a fresh process.
        A timeout is not an exception: the result has ``error`` set and ``exit_code`` -1."""
        return self.client.exec(self.id, code, stdin=stdin,
                                timeout_ms=timeout_ms if timeout_ms is not None else self.exec_timeout_ms,
                                user=user, on_stdout=on_stdout, on_stderr=on_stderr)

    def delete(self) -> None:
        """Deletes the sandbox (its VM and files); closes the client this handle made."""
        try:
            self.client.delete_sandbox(self.id)
        finally:
            self.close()

    def close(self) -> None:
        """Closes the client this handle made (if it made one); the sandbox lives on."""
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, t: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        try:
            self.delete()
        except SandboxNotFound:
            pass

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r}, pack={self.pack!r})"


class Files:
    """The files of a sandbox (``sb.files``). Paths are absolute guest paths; files
    persist between execs for the life of the sandbox."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    def write(self, path: str, data: WriteData, *, mkdir: bool = True, mode: Optional[int] = None,
              user: Optional[str] = None) -> WriteResult:
        """Writes bytes, text (UTF-8), a binary file object or an iterable of byte chunks
        (the last two streamed). Owned by the sandbox user unless ``user="root"``."""
        return self._sb.client.write_file(self._sb.id, path, data, mkdir=mkdir, mode=mode, user=user)

    def read(self, path: str) -> bytes:
        return self._sb.client.read_file(self._sb.id, path)

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return self.read(path).decode(encoding)

    def upload(self, path: str, fileobj: Union[IO[bytes], WriteData], *, mode: Optional[int] = None,
               user: Optional[str] = None) -> WriteResult:
        """Streams ``fileobj`` into the file ``path`` (never held whole in memory)."""
        return self.write(path, fileobj, mode=mode, user=user)

    def download(self, path: str, fileobj: IO[bytes]) -> int:
        """Streams the file into ``fileobj``; returns the bytes written."""
        return self._sb.client.download_file(self._sb.id, path, fileobj)

    def upload_tar(self, path: str, data: WriteData, *, user: Optional[str] = None) -> WriteResult:
        """Unpacks a tar stream into the directory ``path``."""
        return self._sb.client.upload_tar(self._sb.id, path, data, user=user)

    def download_tar(self, path: str, fileobj: IO[bytes]) -> int:
        """Streams ``path`` (a directory or file) packed as a tar into ``fileobj``."""
        return self._sb.client.download_file(self._sb.id, path, fileobj, tar=True)

    def list(self, path: str, depth: int = 1) -> FileList:
        return self._sb.client.list_files(self._sb.id, path, depth=depth)

    def stat(self, path: str) -> FileStat:
        return self._sb.client.stat_file(self._sb.id, path)

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
            return True
        except NotFound:
            return False

    def remove(self, path: str, recursive: bool = False) -> None:
        self._sb.client.remove_file(self._sb.id, path, recursive=recursive)

    def mkdir(self, path: str, *, user: Optional[str] = None) -> None:
        """Makes a directory and its missing parents."""
        self._sb.client.mkdir(self._sb.id, path, user=user)


class Processes:
    """Background processes of a sandbox (``sb.processes``)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    def start(self, cmd: Optional[List[str]] = None, cwd: Optional[str] = None, env: Optional[Dict[str, str]] = None,
              pty: PtyArg = None, *, code: Optional[str] = None, stdin: bool = False,
              timeout_ms: Optional[int] = None, user: Optional[str] = None) -> Process:
        """Starts ``cmd`` (an argv, found on PATH) or ``code`` (for the pack's interpreter).
        ``stdin=True`` keeps its stdin open for :meth:`Process.write_stdin`; ``pty`` (a
        :class:`Pty`, ``(rows, cols)`` or True) runs it on a terminal."""
        pid = self._sb.client.start_process(self._sb.id, cmd, code=code, cwd=cwd, env=env, stdin=stdin,
                                            pty=pty, timeout_ms=timeout_ms, user=user)
        return Process(self._sb, pid)

    def list(self) -> List[ProcessInfo]:
        return self._sb.client.list_processes(self._sb.id)

    def get(self, pid: int) -> ProcessInfo:
        return self._sb.client.get_process(self._sb.id, pid)

    def kill(self, pid: int, signal: Union[str, int] = "TERM") -> None:
        """Sends ``signal`` (default TERM) to the process."""
        self._sb.client.signal_process(self._sb.id, pid, signal)

    signal = kill

    def write_stdin(self, pid: int, data: Union[bytes, str], eof: bool = False) -> None:
        self._sb.client.write_stdin(self._sb.id, pid, data, eof=eof)

    def close_stdin(self, pid: int) -> None:
        self._sb.client.write_stdin(self._sb.id, pid, b"", eof=True)

    def resize(self, pid: int, rows: int, cols: int) -> None:
        self._sb.client.resize_process(self._sb.id, pid, rows, cols)

    def output(self, pid: int, cursor: int = 0, limit: Optional[int] = None) -> OutputPage:
        """One page of output from ``cursor``; go on from ``page.next_cursor``."""
        return self._sb.client.process_output(self._sb.id, pid, cursor, limit=limit)

    def follow(self, pid: int, cursor: int = 0) -> ProcessFollow:
        """Iterates the output from ``cursor`` as it is written, until the process ends."""
        return self._sb.client.follow_output(self._sb.id, pid, cursor)

    def wait(self, pid: int) -> ProcessInfo:
        """Waits for the process to end; its final state."""
        info = self.get(pid)
        if not info.running:
            return info
        with self.follow(pid, cursor=info.output_bytes) as f:
            return f.wait()


class Process:
    """A handle on one background process (what :meth:`Processes.start` returns)."""

    def __init__(self, sandbox: Sandbox, pid: int) -> None:
        self.sandbox = sandbox
        self.pid = pid

    def info(self) -> ProcessInfo:
        return self.sandbox.processes.get(self.pid)

    def kill(self, signal: Union[str, int] = "TERM") -> None:
        self.sandbox.processes.kill(self.pid, signal)

    def write_stdin(self, data: Union[bytes, str], eof: bool = False) -> None:
        self.sandbox.processes.write_stdin(self.pid, data, eof)

    def close_stdin(self) -> None:
        self.sandbox.processes.close_stdin(self.pid)

    def resize(self, rows: int, cols: int) -> None:
        self.sandbox.processes.resize(self.pid, rows, cols)

    def output(self, cursor: int = 0, limit: Optional[int] = None) -> OutputPage:
        return self.sandbox.processes.output(self.pid, cursor, limit)

    def follow(self, cursor: int = 0) -> ProcessFollow:
        return self.sandbox.processes.follow(self.pid, cursor)

    def wait(self) -> ProcessInfo:
        return self.sandbox.processes.wait(self.pid)

    def __repr__(self) -> str:
        return f"Process(pid={self.pid}, sandbox={self.sandbox.id!r})"
