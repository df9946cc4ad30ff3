"""Exceptions: every failure the SDK reports is an :class:`EmberdError`.

An HTTP error answer becomes the subclass for its status, carrying the daemon's
``{"error": "…"}`` message. A timed-out exec is not an exception: the daemon answers it
with a result whose ``error`` is set, and so does the SDK.
"""

from __future__ import annotations

from typing import Optional


class EmberdError(Exception):
    """Base class. ``status`` is the HTTP status (0 when no answer came)."""

    def __init__(self, status: int, message: str, *, retry_after: Optional[float] = None) -> None:
        super().__init__(f"{message} (HTTP {status})" if status else message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class BadRequest(EmberdError):
    """400: invalid input (an unknown pack, a bad path, a limit over its maximum...)."""


class Unauthorized(EmberdError):
    """401: a missing or wrong bearer token."""


class Forbidden(EmberdError):
    """403: a foreign Origin or Host header."""


class NotFound(EmberdError):
    """404: no such sandbox, process, file or route."""


class SandboxNotFound(NotFound):
    """404 ``sandbox not found``: the sandbox never existed, was deleted or reaped."""


class ProcessNotFound(NotFound):
    """404 ``no such process: N``."""


class FileNotFound(NotFound):
    """404 ``no such file: /path``."""


class Conflict(EmberdError):
    """409: the sandbox is not running, a directory where a file was wanted, a process that ended..."""


class RequestTimeout(EmberdError):
    """408: the request body (an upload) stalled."""


class LimitExceeded(EmberdError):
    """413 (too large, no space), 429 (at capacity, too many requests or processes) or 503
    (shutting down). ``retry_after`` holds the ``Retry-After`` header's seconds when sent."""


class ServerError(EmberdError):
    """500 or 502: the VM, the guest agent or the daemon failed."""


class StreamError(EmberdError):
    """An ``error`` event ended a stream (the sandbox was deleted, the guest stopped
    answering), or the stream ended without its last event."""


class TransportError(EmberdError):
    """No answer: the daemon could not be reached, or the connection broke or timed out."""


def error_for(status: int, message: str, retry_after: Optional[float] = None) -> EmberdError:
    """The exception for an HTTP error answer."""
    cls: type[EmberdError]
    if status == 400:
        cls = BadRequest
    elif status == 401:
        cls = Unauthorized
    elif status == 403:
        cls = Forbidden
    elif status == 404:
        if message == "sandbox not found":
            cls = SandboxNotFound
        elif message.startswith("no such process"):
            cls = ProcessNotFound
        elif message.startswith("no such file"):
            cls = FileNotFound
        else:
            cls = NotFound
    elif status == 408:
        cls = RequestTimeout
    elif status == 409:
        cls = Conflict
    elif status in (413, 429, 503):
        cls = LimitExceeded
    elif status >= 500:
        cls = ServerError
    else:
        cls = EmberdError
    return cls(status, message, retry_after=retry_after)
