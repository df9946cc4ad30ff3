"""emberd: a Python client for the emberd daemon (microVM sandboxes for untrusted code).

    from emberd import Sandbox
    with Sandbox.create(pack="python") as sb:
        print(sb.exec("print(6*7)").stdout)

The daemon is at ``EMBERD_ADDR`` (then 127.0.0.1:7777); its token in ``EMBERD_TOKEN``.
"""

from ._async_client import AsyncClient, AsyncProcessFollow
from ._async_sandbox import AsyncFiles, AsyncProcess, AsyncProcesses, AsyncSandbox
from ._client import Client, ProcessFollow
from ._errors import (
    BadRequest,
    Conflict,
    EmberdError,
    FileNotFound,
    Forbidden,
    LimitExceeded,
    NotFound,
    ProcessNotFound,
    RequestTimeout,
    SandboxNotFound,
    ServerError,
    StreamError,
    TransportError,
    Unauthorized,
)
from ._sandbox import Files, Process, Processes, Sandbox
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

__version__ = "0.1.0"

__all__ = [
    "AsyncClient", "AsyncFiles", "AsyncProcess", "AsyncProcessFollow", "AsyncProcesses", "AsyncSandbox",
    "BadRequest", "Client", "Conflict", "EmberdError", "ExecResult", "FileEntry", "FileList", "FileNotFound",
    "FileStat", "Files", "Forbidden", "Info", "LimitExceeded", "NotFound", "OutputChunk", "OutputPage",
    "Process", "ProcessFollow", "ProcessInfo", "ProcessNotFound", "Processes", "Pty", "RequestTimeout",
    "Sandbox", "SandboxInfo", "SandboxNotFound", "ServerError", "StreamError", "TransportError",
    "Unauthorized", "WriteResult", "__version__",
]
