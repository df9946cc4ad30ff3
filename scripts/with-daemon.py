#!/usr/bin/env python3
"""Runs a command against a fresh emberd daemon, then stops the daemon.

    scripts/with-daemon.py [--emberd PATH] [--serve-arg ARG]... -- COMMAND [ARG]...

Starts `emberd serve` on a free loopback port with its own work directory (the data dir
comes from EMBERD_DATA_DIR, as for `make run`), waits until `/healthz` answers, runs
COMMAND with EMBERD_ADDR set to the daemon's address, and stops the daemon with SIGTERM
(SIGKILL after 30 s). Exits with COMMAND's status; when the daemon does not come up, or
exits early, prints the end of its log and exits 1. Used by `make test` for the Python
suites (SDK, OpenAPI, MCP, examples, eval).
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

READY_WITHIN_S = 120.0
STOP_WITHIN_S = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return f"(no log: {e})"


def wait_ready(addr: str, daemon: subprocess.Popen, log: str) -> None:
    deadline = time.monotonic() + READY_WITHIN_S
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            sys.exit(f"with-daemon: emberd exited with {daemon.returncode} before it was ready\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(f"http://{addr}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    daemon.kill()
    sys.exit(f"with-daemon: emberd did not answer /healthz within {READY_WITHIN_S:.0f} s\n{log_tail(log)}")


def stop(daemon: subprocess.Popen) -> None:
    if daemon.poll() is not None:
        return
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(timeout=STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emberd", default=os.environ.get("EMBERD_BIN", "target/release/emberd"))
    parser.add_argument("--serve-arg", action="append", default=[], help="an extra argument to `emberd serve`")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")

    work_dir = tempfile.mkdtemp(prefix="emberd-with-daemon-")
    log = os.path.join(work_dir, "emberd.log")
    addr = f"127.0.0.1:{free_port()}"
    serve = [args.emberd, "serve", "--addr", addr, "--work-dir", os.path.join(work_dir, "work"), *args.serve_arg]
    with open(log, "wb") as out:
        daemon = subprocess.Popen(serve, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_ready(addr, daemon, log)
        env = dict(os.environ, EMBERD_ADDR=addr)
        status = subprocess.call(command, env=env)
        if daemon.poll() is not None:
            print(f"with-daemon: emberd exited with {daemon.returncode} during the run\n{log_tail(log)}", file=sys.stderr)
            status = status or 1
        elif status != 0:
            print(f"with-daemon: the daemon's log ends with:\n{log_tail(log)}", file=sys.stderr)
        return status
    finally:
        stop(daemon)
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
