"""Read tripwires: who opened or read a watched file, whatever its access-time policy.

Uses fanotify (root: every event names the reading process) and falls back to inotify
(`IN_OPEN`/`IN_ACCESS`, no process). Both see reads by any process on the host, unlike
access times, which `relatime`/`noatime` mounts do not update on every read. Owns its
watch thread and descriptors; never opens a watched file itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import threading
from dataclasses import dataclass

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

FAN_CLOEXEC, FAN_NONBLOCK, FAN_CLASS_NOTIF = 0x1, 0x2, 0x0
FAN_ACCESS, FAN_OPEN, FAN_Q_OVERFLOW = 0x1, 0x20, 0x4000
FAN_MARK_ADD = 0x1
O_LARGEFILE = 0o100000
AT_FDCWD = -100
IN_ACCESS, IN_OPEN, IN_NONBLOCK, IN_CLOEXEC = 0x1, 0x20, 0o4000, 0o2000000
_FAN_META = struct.Struct("=IBBHQii")
_IN_EVENT = struct.Struct("=iIII")


@dataclass(frozen=True)
class Access:
    path: str
    pid: int  # 0 when the mechanism does not say (inotify)
    comm: str


class AccessWatch:
    """Records opens and reads of the given files until closed."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = [os.path.abspath(p) for p in paths]
        self._events: list[Access] = []
        self._lock = threading.Lock()
        self._stop_r, self._stop_w = os.pipe()
        self.mechanism, self._fd, self._wds = self._open()
        self._thread = threading.Thread(target=self._run, name="access-watch", daemon=True)
        self._thread.start()

    def _open(self) -> tuple[str, int, dict[int, str]]:
        fd = _libc.fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK, os.O_RDONLY | O_LARGEFILE)
        if fd >= 0:
            mark = _libc.fanotify_mark
            mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
            for p in self.paths:
                if mark(fd, FAN_MARK_ADD, FAN_ACCESS | FAN_OPEN, AT_FDCWD, p.encode()) != 0:
                    err = ctypes.get_errno()
                    os.close(fd)
                    raise OSError(err, f"fanotify_mark {p}: {os.strerror(err)}")
            return "fanotify", fd, {}
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"neither fanotify nor inotify is available: {os.strerror(err)}")
        wds: dict[int, str] = {}
        for p in self.paths:
            wd = _libc.inotify_add_watch(fd, p.encode(), IN_ACCESS | IN_OPEN)
            if wd < 0:
                err = ctypes.get_errno()
                os.close(fd)
                raise OSError(err, f"inotify_add_watch {p}: {os.strerror(err)}")
            wds[wd] = p
        return "inotify", fd, wds

    def _run(self) -> None:
        while True:
            ready, _, _ = select.select([self._fd, self._stop_r], [], [])
            if self._fd in ready:
                self._drain()
            if self._stop_r in ready:
                self._drain()
                return

    def _drain(self) -> None:
        # Read and record under one lock, so `events()` never sees the queue emptied
        # by this thread before what it read has been recorded.
        with self._lock:
            while True:
                try:
                    buf = os.read(self._fd, 64 * 1024)
                except BlockingIOError:
                    return
                if not buf:
                    return
                found = self._parse_fanotify(buf) if self.mechanism == "fanotify" else self._parse_inotify(buf)
                self._events.extend(found)

    def _parse_fanotify(self, buf: bytes) -> list[Access]:
        out, off = [], 0
        while off + _FAN_META.size <= len(buf):
            length, _vers, _res, _mlen, mask, fd, pid = _FAN_META.unpack_from(buf, off)
            if length < _FAN_META.size:
                break
            off += length
            path = "?"
            if fd >= 0:
                try:
                    path = os.readlink(f"/proc/self/fd/{fd}")
                finally:
                    os.close(fd)
            if mask & FAN_Q_OVERFLOW:
                path = "(event queue overflowed)"
            out.append(Access(path, pid, _comm(pid)))
        return out

    def _parse_inotify(self, buf: bytes) -> list[Access]:
        out, off = [], 0
        while off + _IN_EVENT.size <= len(buf):
            wd, _mask, _cookie, name_len = _IN_EVENT.unpack_from(buf, off)
            off += _IN_EVENT.size + name_len
            out.append(Access(self._wds.get(wd, "?"), 0, "?"))
        return out

    def events(self) -> list[Access]:
        """Every access seen so far (reads pending in the kernel queue included)."""
        self._drain()
        with self._lock:
            return list(self._events)

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join()
        for fd in (self._fd, self._stop_r, self._stop_w):
            os.close(fd)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "?"
