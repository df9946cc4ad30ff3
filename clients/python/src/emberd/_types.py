"""Result types: dataclasses mirroring the wire types of ``emberd-api``.

Each ``from_json`` takes the daemon's JSON object and never fails on a field it does not
know (newer daemons may add some).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional


def _opt_int(v: Any) -> Optional[int]:
    return int(v) if v is not None else None


def _opt_str(v: Any) -> Optional[str]:
    return str(v) if v is not None else None


@dataclass(frozen=True)
class ExecResult:
    """The answer to an exec, whatever its exit code. ``error`` is set when the run ended
    abnormally (``"execution timed out"``, ``"killed by signal 9"``); ``exit_code`` is
    then -1."""

    stdout: str
    stderr: str
    exit_code: int
    duration_ms: int
    duration_us: Optional[int] = None
    vm_duration_us: Optional[int] = None
    error: Optional[str] = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False

    @property
    def ok(self) -> bool:
        """True when the program exited 0 and nothing went wrong."""
        return self.exit_code == 0 and self.error is None

    @property
    def timed_out(self) -> bool:
        return self.error == "execution timed out"

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ExecResult:
        return cls(
            stdout=str(d.get("stdout", "")),
            stderr=str(d.get("stderr", "")),
            exit_code=int(d["exit_code"]),
            duration_ms=int(d.get("duration_ms", 0)),
            duration_us=_opt_int(d.get("duration_us")),
            vm_duration_us=_opt_int(d.get("vm_duration_us")),
            error=_opt_str(d.get("error")),
            stdout_truncated=bool(d.get("stdout_truncated", False)),
            stderr_truncated=bool(d.get("stderr_truncated", False)),
        )


@dataclass(frozen=True)
class SandboxInfo:
    """One sandbox as ``GET /sandboxes[/{id}]`` describes it. ``state`` is ``booting``,
    ``running``, ``exited`` or ``stopping``."""

    id: str
    pack: str
    state: str
    backend: str
    created_at: str
    boot_path: Optional[str] = None
    vmm_pid: Optional[int] = None
    console_tail: Optional[str] = None
    expires_at: Optional[str] = None
    idle_expires_at: Optional[str] = None
    exit_reason: Optional[str] = None
    vcpus: Optional[int] = None
    memory_mib: Optional[int] = None
    disk_mib: Optional[int] = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SandboxInfo:
        return cls(
            id=str(d["id"]),
            pack=str(d["pack"]),
            state=str(d["state"]),
            backend=str(d.get("backend", "")),
            created_at=str(d.get("created_at", "")),
            boot_path=_opt_str(d.get("boot_path")),
            vmm_pid=_opt_int(d.get("vmm_pid")),
            console_tail=_opt_str(d.get("console_tail")),
            expires_at=_opt_str(d.get("expires_at")),
            idle_expires_at=_opt_str(d.get("idle_expires_at")),
            exit_reason=_opt_str(d.get("exit_reason")),
            vcpus=_opt_int(d.get("vcpus")),
            memory_mib=_opt_int(d.get("memory_mib")),
            disk_mib=_opt_int(d.get("disk_mib")),
        )


@dataclass(frozen=True)
class Info:
    """``GET /info``: the daemon's configuration and how the next create is served."""

    guest_ram_mib: int
    guest_vcpus: int
    boot_path: str
    packs: List[str]
    work_dir: str
    backend: Optional[str] = None
    accel: Optional[str] = None
    isolation: Optional[str] = None
    version: Optional[str] = None
    sandboxes_reaped: Optional[int] = None
    pool_ready: Optional[Dict[str, int]] = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Info:
        pool = d.get("pool_ready")
        return cls(
            guest_ram_mib=int(d["guest_ram_mib"]),
            guest_vcpus=int(d["guest_vcpus"]),
            boot_path=str(d["boot_path"]),
            packs=[str(p) for p in d.get("packs", [])],
            work_dir=str(d.get("work_dir", "")),
            backend=_opt_str(d.get("backend")),
            accel=_opt_str(d.get("accel")),
            isolation=_opt_str(d.get("isolation")),
            version=_opt_str(d.get("version")),
            sandboxes_reaped=_opt_int(d.get("sandboxes_reaped")),
            pool_ready={str(k): int(v) for k, v in pool.items()} if isinstance(pool, dict) else None,
        )


@dataclass(frozen=True)
class FileEntry:
    """One entry of a directory listing. ``type`` is ``file``, ``dir``, ``symlink`` or
    ``other``; ``mode`` is octal text (``"0644"``), ``mtime`` RFC 3339 UTC."""

    path: str
    name: str
    type: str
    size: int
    mode: str
    mtime: str
    link_target: Optional[str] = None

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"

    @property
    def is_file(self) -> bool:
        return self.type == "file"

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FileEntry:
        return cls(
            path=str(d["path"]),
            name=str(d["name"]),
            type=str(d["type"]),
            size=int(d.get("size", 0)),
            mode=str(d.get("mode", "")),
            mtime=str(d.get("mtime", "")),
            link_target=_opt_str(d.get("link_target")),
        )


class FileList(List[FileEntry]):
    """The entries of a listing (a list), with ``truncated`` set when the daemon left some
    out (over 10,000)."""

    truncated: bool = False


@dataclass(frozen=True)
class FileStat:
    """What ``HEAD …/files`` says of a path. ``type`` is ``file`` or ``dir`` (or ``symlink``,
    ``other``); ``size`` is in bytes."""

    path: str
    type: str
    size: int
    mode: str
    mtime: str

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"


@dataclass(frozen=True)
class WriteResult:
    """The answer to a write or upload: the bytes written (or unpacked, for a tar) and the
    entries unpacked (tar only)."""

    path: str
    bytes: int
    entries: Optional[int] = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> WriteResult:
        return cls(path=str(d["path"]), bytes=int(d["bytes"]), entries=_opt_int(d.get("entries")))


@dataclass(frozen=True)
class ProcessInfo:
    """A background process. ``state`` is ``running``, ``exited`` (see ``exit_code``),
    ``killed`` (see ``signal``, ``timed_out``) or ``lost`` (see ``error``).
    ``output_bytes`` is the cursor after its last byte of output."""

    pid: int
    command: List[str]
    state: str
    started_at: str
    output_bytes: int
    output_dropped: int
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    timed_out: bool = False
    error: Optional[str] = None
    ended_at: Optional[str] = None
    pty: bool = False

    @property
    def running(self) -> bool:
        return self.state == "running"

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ProcessInfo:
        return cls(
            pid=int(d["pid"]),
            command=[str(c) for c in d.get("command", [])],
            state=str(d["state"]),
            started_at=str(d.get("started_at", "")),
            output_bytes=int(d.get("output_bytes", 0)),
            output_dropped=int(d.get("output_dropped", 0)),
            exit_code=_opt_int(d.get("exit_code")),
            signal=_opt_int(d.get("signal")),
            timed_out=bool(d.get("timed_out", False)),
            error=_opt_str(d.get("error")),
            ended_at=_opt_str(d.get("ended_at")),
            pty=bool(d.get("pty", False)),
        )


def decode_data(d: Mapping[str, Any]) -> bytes:
    """The bytes of an output event: UTF-8 text, or base64 when ``base64`` is set."""
    data = str(d.get("data", ""))
    return base64.b64decode(data) if d.get("base64") else data.encode("utf-8")


@dataclass(frozen=True)
class OutputChunk:
    """A piece of a process's output. ``stream`` is ``stdout`` or ``stderr``; ``cursor`` is
    the log offset of its first byte (stdout and stderr share one offset space), so the
    next piece starts at ``cursor + len(data)``."""

    stream: str
    data: bytes
    cursor: int

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")

    @property
    def end(self) -> int:
        return self.cursor + len(self.data)

    @classmethod
    def from_json(cls, stream: str, d: Mapping[str, Any]) -> OutputChunk:
        return cls(stream=stream, data=decode_data(d), cursor=int(d.get("cursor", 0)))


@dataclass(frozen=True)
class OutputPage:
    """One page of a process's log. Ask again from ``next_cursor``; ``complete`` is true once
    the process ended and ``next_cursor`` is the end. ``dropped`` counts bytes that fell
    off the start of the log before the asked cursor."""

    chunks: List[OutputChunk]
    next_cursor: int
    complete: bool
    dropped: int = 0

    @property
    def stdout(self) -> bytes:
        return b"".join(c.data for c in self.chunks if c.stream == "stdout")

    @property
    def stderr(self) -> bytes:
        return b"".join(c.data for c in self.chunks if c.stream == "stderr")

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> OutputPage:
        return cls(
            chunks=[OutputChunk.from_json(str(c["stream"]), c) for c in d.get("chunks", [])],
            next_cursor=int(d["next_cursor"]),
            complete=bool(d.get("complete", False)),
            dropped=int(d.get("dropped", 0)),
        )


@dataclass
class Pty:
    """A terminal size for a process started with ``pty``."""

    rows: int = 24
    cols: int = 80

