#!/usr/bin/env python3
"""Measures the first exec after a pool hand-out against steady execs.

    EMBERD_ADDR=127.0.0.1:PORT scripts/pool-first-exec.py [--rounds N] [--steady N] [--pack P]

Each round waits until the pack's pool is full, creates a sandbox (which the pool
serves), runs `print(6*7)` once (the first exec) and then `--steady` times more, and
deletes the sandbox. Prints, per round and in total, the first exec's time and the
median of the steady ones as the client saw them (ms), with the daemon's
`duration_ms`, the VM's `vm_duration_us` and the agent's `duration_us`; then, over all
steady execs, the medians of the agent's time, of the channel (VM time less agent
time: the VMM and the guest kernel both ways) and of the client's time less the agent's.
Uses only the standard library.
"""

import argparse
import json
import os
import statistics
import time
import urllib.request

CODE = "print(6*7)"


def call(addr: str, method: str, path: str, body: object = None) -> tuple[float, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{addr}{path}", data=data, method=method,
                                 headers={"content-type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:
        raw = r.read()
    return (time.perf_counter() - started) * 1000, (json.loads(raw) if raw else {})


def wait_full(addr: str, pack: str, size: int) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        _, info = call(addr, "GET", "/info")
        if (info.get("pool_ready") or {}).get(pack, 0) >= size:
            return
        time.sleep(0.2)
    raise SystemExit("the pool did not fill within 300 s")


def exec_once(addr: str, sid: str) -> dict:
    ms, r = call(addr, "POST", f"/sandboxes/{sid}/exec", {"code": CODE})
    assert r["stdout"] == "42\n", r
    return {"client_ms": ms, "api_ms": r["duration_ms"],
            "vm_us": r.get("vm_duration_us"), "agent_us": r.get("duration_us")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steady", type=int, default=20)
    ap.add_argument("--pack", default="python")
    ap.add_argument("--pool-size", type=int, default=2)
    ap.add_argument("--settle", type=float, default=0.0,
                    help="seconds to wait after the pool is full (lets the pool's background work end)")
    args = ap.parse_args()
    addr = os.environ.get("EMBERD_ADDR", "127.0.0.1:7777")
    firsts, steadies, creates, paths = [], [], [], []
    records: list[dict] = []
    for n in range(args.rounds):
        wait_full(addr, args.pack, args.pool_size)
        time.sleep(args.settle)
        create_ms, created = call(addr, "POST", "/sandboxes", {"language_pack": args.pack})
        sid = created["id"]
        first = exec_once(addr, sid)
        steady = [exec_once(addr, sid) for _ in range(args.steady)]
        _, info = call(addr, "GET", f"/sandboxes/{sid}")
        call(addr, "DELETE", f"/sandboxes/{sid}")
        med = statistics.median(s["client_ms"] for s in steady)
        print(f"round {n}: path={info.get('boot_path')} create={create_ms:.1f} ms "
              f"first={first['client_ms']:.1f} ms (vm {first['vm_us']} us, agent {first['agent_us']} us) "
              f"steady median={med:.1f} ms", flush=True)
        firsts.append(first["client_ms"])
        steadies.extend(s["client_ms"] for s in steady)
        records.extend(steady)
        creates.append(create_ms)
        paths.append(info.get("boot_path"))
    print(f"boot paths: {paths}")
    print(f"create median {statistics.median(creates):.1f} ms; first exec median "
          f"{statistics.median(firsts):.1f} ms (min {min(firsts):.1f}, max {max(firsts):.1f}); "
          f"steady median {statistics.median(steadies):.1f} ms over {len(steadies)} execs; "
          f"create+first / steady = {(statistics.median(creates) + statistics.median(firsts)) / statistics.median(steadies):.1f}x")
    timed = [r for r in records if r["vm_us"] is not None and r["agent_us"] is not None]
    if timed:
        med = lambda xs: statistics.median(xs)  # noqa: E731
        print(f"steady execs with timings: {len(timed)}; medians: agent {med([r['agent_us'] for r in timed]):.0f} us, "
              f"vm {med([r['vm_us'] for r in timed]):.0f} us, channel (vm - agent) "
              f"{med([r['vm_us'] - r['agent_us'] for r in timed]):.0f} us, client - agent "
              f"{med([r['client_ms'] * 1000 - r['agent_us'] for r in timed]):.0f} us, client - vm "
              f"{med([r['client_ms'] * 1000 - r['vm_us'] for r in timed]):.0f} us")


if __name__ == "__main__":
    main()
