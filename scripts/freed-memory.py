#!/usr/bin/env python3
"""Measures what host memory a guest keeps after it used memory and freed it.

    EMBERD_ADDR=127.0.0.1:PORT scripts/freed-memory.py [--mib N] [--rounds R] [--pack P]

Each round creates a sandbox and reads its VMM's PSS (`/proc/PID/smaps_rollup`, the
daemon must run on this host and this script must be able to read the VMM's files):
idle, then after one exec wrote to N MiB and ended (the guest kernel freed that memory),
then after a second exec of the same size (the guest reuses its free pages, so the host's
figure should barely move). Prints each reading in MiB and deletes the sandbox. Without a
balloon that hands free pages back, "after free" stays about N MiB above "idle". Uses only
the standard library.
"""

import argparse
import json
import os
import statistics
import time
import urllib.request


def call(addr: str, method: str, path: str, body: object = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{addr}{path}", data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        raw = r.read()
    return json.loads(raw) if raw else {}


def pss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss line for pid {pid}")


def touch(mib: int) -> str:
    # One exec that writes every page of N MiB, reports, and frees it on exit.
    return (f"b = bytearray({mib} << 20)\n"
            f"for i in range(0, len(b), 4096): b[i] = 1\n"
            f"print(len(b) >> 20)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pack", default="python")
    args = parser.parse_args()
    addr = os.environ.get("EMBERD_ADDR", "127.0.0.1:7777").removeprefix("http://")
    rows = []
    for _ in range(args.rounds):
        sandbox = call(addr, "POST", "/sandboxes", {"language_pack": args.pack})
        sid = sandbox["id"]
        try:
            pid = call(addr, "GET", f"/sandboxes/{sid}")["vmm_pid"]
            call(addr, "POST", f"/sandboxes/{sid}/exec", {"code": "print(1)"})
            time.sleep(2)
            idle = pss_mib(pid)
            held = call(addr, "POST", f"/sandboxes/{sid}/exec",
                        {"code": touch(args.mib) ,
                         "timeout_ms": 120_000})
            assert held["exit_code"] == 0, held
            time.sleep(2)
            after_free = pss_mib(pid)
            again = call(addr, "POST", f"/sandboxes/{sid}/exec",
                         {"code": touch(args.mib), "timeout_ms": 120_000})
            assert again["exit_code"] == 0, again
            time.sleep(2)
            after_reuse = pss_mib(pid)
        finally:
            call(addr, "DELETE", f"/sandboxes/{sid}")
        rows.append((idle, after_free, after_reuse))
        print(f"{sid}: idle {idle:.1f} MiB, after {args.mib} MiB used and freed "
              f"{after_free:.1f} MiB, after a second use {after_reuse:.1f} MiB", flush=True)
    for name, i in (("idle", 0), ("after free", 1), ("after reuse", 2)):
        print(f"median {name}: {statistics.median(r[i] for r in rows):.1f} MiB")
    kept = statistics.median(r[1] - r[0] for r in rows)
    print(f"median kept by the host after the guest freed {args.mib} MiB: {kept:.1f} MiB")


if __name__ == "__main__":
    main()
