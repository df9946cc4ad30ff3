"""What the sync and async clients share: the daemon's address and token, timeouts,
turning error answers into exceptions, and parsing Server-Sent Events.

Never does I/O itself.
"""

from __future__ import annotations

import codecs
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Union

import httpx

from ._errors import EmberdError, StreamError, TransportError, error_for
from ._types import ExecResult, OutputChunk, ProcessInfo, decode_data

DEFAULT_ADDR = "127.0.0.1:7777"
#: Every call but execs and streams: a create may cold-boot a VM under emulation.
DEFAULT_TIMEOUT_S = 180.0
#: The daemon's default exec timeout.
DEFAULT_EXEC_TIMEOUT_MS = 30_000
#: How long past an exec's own timeout the client waits (the daemon's bound is 15 s).
EXEC_GRACE_S = 30.0
USER_AGENT = "emberd-python/0.1.0"

OutputCallback = Callable[[str], object]
Content = Union[bytes, str]


def base_url(addr: Optional[str]) -> str:
    """``addr`` (or ``EMBERD_ADDR``, then 127.0.0.1:7777) as a URL: ``host:port`` or a URL."""
    a = (addr or os.environ.get("EMBERD_ADDR") or DEFAULT_ADDR).strip().rstrip("/")
    if "://" not in a:
        a = "http://" + a
    return a


def headers(token: Optional[str]) -> Dict[str, str]:
    tok = token if token is not None else os.environ.get("EMBERD_TOKEN")
    h = {"User-Agent": USER_AGENT}
    if tok:
        h["Authorization"] = f"Bearer {tok}"
    return h


def timeout(default_s: float) -> httpx.Timeout:
    return httpx.Timeout(default_s, connect=min(default_s, 30.0))


def exec_timeout(timeout_ms: Optional[int]) -> httpx.Timeout:
    """A read timeout past the exec's own, so that the daemon's answer (a result with
    ``error`` set) always arrives before the client gives up."""
    ms = timeout_ms if timeout_ms is not None else DEFAULT_EXEC_TIMEOUT_MS
    return httpx.Timeout(ms / 1000 + EXEC_GRACE_S, connect=30.0)


STREAM_TIMEOUT = httpx.Timeout(None, connect=30.0)


def _retry_after(resp: httpx.Response) -> Optional[float]:
    v = resp.headers.get("retry-after")
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


def error_from(resp: httpx.Response, body: bytes) -> EmberdError:
    """The exception for an error answer whose body has been read."""
    message = ""
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
            message = parsed["error"]
    except ValueError:
        pass
    if not message:
        message = body.decode("utf-8", errors="replace").strip() or resp.reason_phrase
    return error_for(resp.status_code, message, _retry_after(resp))


def check(resp: httpx.Response) -> httpx.Response:
    """``resp`` (read) when it is a success, else its exception."""
    if resp.status_code >= 400:
        raise error_from(resp, resp.content)
    return resp


def transport_error(e: httpx.HTTPError, url: str) -> TransportError:
    kind = "timed out" if isinstance(e, httpx.TimeoutException) else "failed"
    return TransportError(0, f"request to {url} {kind}: {e}")


def drop_none(d: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def exec_body(code: str, stdin: Optional[str], timeout_ms: Optional[int], user: Optional[str]) -> Dict[str, Any]:
    return drop_none({"code": code, "stdin": stdin, "timeout_ms": timeout_ms, "user": user})


def process_body(
    cmd: Optional[List[str]],
    code: Optional[str],
    cwd: Optional[str],
    env: Optional[Dict[str, str]],
    stdin: bool,
    pty: Any,
    timeout_ms: Optional[int],
    user: Optional[str],
) -> Dict[str, Any]:
    if (cmd is None) == (code is None):
        raise ValueError("give exactly one of cmd and code")
    body = drop_none({"cmd": list(cmd) if cmd is not None else None, "code": code, "cwd": cwd,
                      "timeout_ms": timeout_ms, "user": user})
    if env:
        body["env"] = dict(env)
    if stdin:
        body["stdin"] = True
    if pty is not None and pty is not False:
        if pty is True:
            body["pty"] = {"rows": 24, "cols": 80}
        elif isinstance(pty, tuple):
            body["pty"] = {"rows": int(pty[0]), "cols": int(pty[1])}
        else:
            body["pty"] = {"rows": int(pty.rows), "cols": int(pty.cols)}
    return body


@dataclass
class Event:
    event: str
    data: str
    id: Optional[str]


class SSEParser:
    """Server-Sent Events, fed one line at a time (without its line ending)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: List[str] = []
        self._id: Optional[str] = None

    def feed(self, line: str) -> Optional[Event]:
        if line == "":
            if not self._data and not self._event:
                return None
            ev = Event(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data, self._id = "", [], None
            return ev
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None


def event_json(ev: Event) -> Dict[str, Any]:
    try:
        d = json.loads(ev.data)
    except ValueError as e:
        raise StreamError(0, f"malformed {ev.event!r} event: {e}") from e
    if not isinstance(d, dict):
        raise StreamError(0, f"malformed {ev.event!r} event: not an object")
    return d


class ExecCollector:
    """Turns the events of a streamed exec into callbacks and, at its ``exit``, the
    result (with the output the events carried)."""

    def __init__(self, on_stdout: Optional[OutputCallback], on_stderr: Optional[OutputCallback]) -> None:
        self._callbacks = {"stdout": on_stdout, "stderr": on_stderr}
        self._bufs: Dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self._decoders = {s: codecs.getincrementaldecoder("utf-8")(errors="replace") for s in self._bufs}
        self.result: Optional[ExecResult] = None

    def on_event(self, ev: Event) -> None:
        if ev.event in ("stdout", "stderr"):
            data = decode_data(event_json(ev))
            self._bufs[ev.event] += data
            cb = self._callbacks[ev.event]
            if cb is not None:
                text = self._decoders[ev.event].decode(data)
                if text:
                    cb(text)
        elif ev.event == "exit":
            d = event_json(ev)
            for s in ("stdout", "stderr"):
                cb = self._callbacks[s]
                rest = self._decoders[s].decode(b"", final=True)
                if cb is not None and rest:
                    cb(rest)
                d[s] = self._bufs[s].decode("utf-8", errors="replace")
            self.result = ExecResult.from_json(d)
        elif ev.event == "error":
            raise StreamError(0, str(event_json(ev).get("error", "the stream failed")))

    def finish(self) -> ExecResult:
        if self.result is None:
            raise StreamError(0, "the exec stream ended without its exit event")
        return self.result


class FollowState:
    """The events of ``…/output?follow=true``: output chunks out, the rest recorded."""

    def __init__(self, cursor: int) -> None:
        self.cursor = cursor
        self.dropped = 0
        self.exit: Optional[ProcessInfo] = None

    def on_event(self, ev: Event) -> Optional[OutputChunk]:
        if ev.event in ("stdout", "stderr"):
            chunk = OutputChunk.from_json(ev.event, event_json(ev))
            self.cursor = chunk.end
            return chunk
        if ev.event == "dropped":
            d = event_json(ev)
            self.dropped += int(d.get("dropped", 0))
            self.cursor = int(d.get("cursor", self.cursor))
        elif ev.event == "exit":
            self.exit = ProcessInfo.from_json(event_json(ev))
        elif ev.event == "error":
            raise StreamError(0, str(event_json(ev).get("error", "the stream failed")))
        return None

