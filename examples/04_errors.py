"""04: exit codes, exceptions, timeouts, and the SDK's errors.

A program that fails or times out is a result, not an exception: check ``exit_code`` and
``error``. Exceptions (subclasses of EmberdError) are for requests the daemon refuses.

    python examples/04_errors.py
"""

from emberd import BadRequest, EmberdError, FileNotFound, LimitExceeded, Sandbox, SandboxNotFound

with Sandbox.create() as sb:
    r = sb.exec("import sys; print('partial'); sys.exit(3)")
    print(f"exit code {r.exit_code}, ok={r.ok}, stdout={r.stdout.strip()!r}")

    r = sb.exec("1 / 0")
    print(f"exception: exit code {r.exit_code}, last line of stderr: {r.stderr.strip().splitlines()[-1]}")

    r = sb.exec("import time\nprint('working...', flush=True)\ntime.sleep(60)", timeout_ms=1500)
    print(f"timeout: exit code {r.exit_code}, error={r.error!r}, output kept: {r.stdout.strip()!r}")

    r = sb.exec("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    print(f"signal: exit code {r.exit_code}, error={r.error!r}")

    try:
        sb.files.read("/no/such/file")
    except FileNotFound as e:
        print(f"FileNotFound: status {e.status}, message {e.message!r}")

    sid = sb.id

try:
    Sandbox.connect(sid)
except SandboxNotFound as e:
    print(f"SandboxNotFound after delete: {e.message!r}")

try:
    Sandbox.create(pack="cobol")
except BadRequest as e:
    print(f"BadRequest: {e.message!r}")

try:
    with Sandbox.create() as sb:
        sb.exec("print(1)", user="nobody")
except LimitExceeded as e:
    # 413/429/503: too big, at capacity (retry after e.retry_after seconds), shutting down.
    print(f"over a limit, retry after {e.retry_after} s")
except EmberdError as e:
    print(f"{type(e).__name__} (every SDK error is an EmberdError): {e.message!r}")
