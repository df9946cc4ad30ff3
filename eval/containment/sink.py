"""A loopback TCP sink: records every connection made to it (peer, first bytes).

Stands in for any service on the host an action might reach or send data to. Listens
on 127.0.0.1 only and never answers with more than a short line.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

MAX_KEPT = 4096


@dataclass(frozen=True)
class Connection:
    peer: str
    data: bytes
    at: float


class Sink:
    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port: int = self._sock.getsockname()[1]
        self._lock = threading.Condition()
        self._in_flight = 0
        self._conns: list[Connection] = []
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="sink", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._in_flight += 1
            threading.Thread(target=self._serve, args=(conn, peer), daemon=True).start()

    def _serve(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        data = b""
        with conn:
            conn.settimeout(2.0)
            try:
                while len(data) < MAX_KEPT:
                    piece = conn.recv(MAX_KEPT - len(data))
                    if not piece:
                        break
                    data += piece
                    if b"\n" in piece:
                        conn.sendall(b"sink: recorded\n")
            except OSError:
                pass
        with self._lock:
            self._conns.append(Connection(f"{peer[0]}:{peer[1]}", data, time.time()))
            self._in_flight -= 1
            self._lock.notify_all()

    def mark(self) -> int:
        """A position: `since(mark)` lists only the connections recorded after it."""
        with self._lock:
            return len(self._conns)

    def since(self, mark: int, wait_s: float = 3.0) -> list[Connection]:
        """Connections after `mark`, once those still open have closed (or `wait_s` passed)."""
        with self._lock:
            self._lock.wait_for(lambda: self._in_flight == 0, timeout=wait_s)
            return self._conns[mark:]

    def close(self) -> None:
        self._sock.close()
        self._thread.join(timeout=2)
