"""06: streamed output, and a background server queried from another exec.

An exec's output can be streamed as it is written (on_stdout / on_stderr). A server must
outlive the exec that would start it, so it runs as a background process: its log is
followed from a thread while other execs talk to it over the sandbox's loopback.

    python examples/06_streaming_server.py
"""

import sys
import threading

from emberd import Sandbox

COUNTDOWN = """
import time
for i in range(3, 0, -1):
    print(f"{i}...", flush=True)
    time.sleep(0.3)
print("liftoff")
"""

CLIENT = """
import http.client
for path in ("/", "/hello.txt", "/missing"):
    c = http.client.HTTPConnection("127.0.0.1", 8000, timeout=60)
    c.request("GET", path)
    r = c.getresponse()
    print(path, r.status, len(r.read()), "bytes")
"""



class Lines:
    """Output arrives in pieces of any size; print it a whole line at a time."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.pending = prefix, ""

    def __call__(self, text: str) -> None:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            print(self.prefix, line, flush=True)


with Sandbox.create() as sb:
    print("streamed exec:")
    sb.exec(COUNTDOWN, on_stdout=Lines("  |"))

    sb.files.write("/home/sandbox/site/hello.txt", "hello from the sandbox\n")
    server = sb.processes.start(["python3", "-u", "-m", "http.server", "8000", "--bind", "127.0.0.1"],
                                cwd="/home/sandbox/site")
    print(f"server started: pid {server.pid}")

    ready = threading.Event()

    def stream_log() -> None:
        # Follows the server's output (stdout and stderr) until the process ends.
        log = {"stdout": Lines("  [server stdout]"), "stderr": Lines("  [server stderr]")}
        for chunk in server.follow():
            log[chunk.stream](chunk.text)
            if b"Serving HTTP" in chunk.data:
                ready.set()

    follower = threading.Thread(target=stream_log)
    follower.start()
    if not ready.wait(timeout=120):
        sys.exit("the server did not start")

    r = sb.exec(CLIENT, timeout_ms=120_000)
    print("client exec:")
    print("".join(f"  {line}\n" for line in r.stdout.splitlines()), end="")

    server.kill()  # SIGTERM
    follower.join()
    info = server.info()
    print(f"server ended: {info.state}, signal {info.signal}, {info.output_bytes} bytes of log")
