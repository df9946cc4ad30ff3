#!/usr/bin/env python3
"""Smoke test of emberd on real Firecracker (`make smoke-firecracker`).

Needs a host with hardware KVM (/dev/kvm backed by kvm_intel or kvm_amd, not
the paravirtual kvm_pvm) and `firecracker` v1.15.1 or later (not 1.16.0) on
PATH, plus built images and a release `emberd`. It fails loudly, naming what
is missing, anywhere else. docs/firecracker.md says what each line means.

Environment: EMBERD_BIN (default target/release/emberd), EMBERD_DATA_DIR
(images; default ~/.local/share/emberd), SMOKE_PACK (default shell).
"""

import concurrent.futures
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

PACK = os.environ.get("SMOKE_PACK", "shell")
EMBERD = os.environ.get("EMBERD_BIN", "target/release/emberd")
DATA = os.environ.get("EMBERD_DATA_DIR", os.path.expanduser("~/.local/share/emberd"))
CLONES = 20
ROWS = []


def row(check, ok, detail):
    ROWS.append((check, "ok" if ok else "FAIL", detail))


def fail_preflight(reasons):
    print("smoke-firecracker: cannot run on this host:", file=sys.stderr)
    for reason in reasons:
        print(f"  - {reason}", file=sys.stderr)
    print("see docs/firecracker.md, 'Smoke test on a KVM host'", file=sys.stderr)
    sys.exit(2)


def release_of(text):
    m = re.search(r"v(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(x) for x in m.groups()) if m else None


def preflight():
    reasons = []
    # As the daemon's own check (vmm/kvm.rs): loaded modules in /sys/module.
    loaded = set(os.listdir("/sys/module")) if os.path.isdir("/sys/module") else set()
    if not os.path.exists("/dev/kvm"):
        reasons.append("/dev/kvm does not exist: no KVM on this host")
    elif "kvm_pvm" in loaded and not loaded & {"kvm_intel", "kvm_amd"}:
        reasons.append(
            "/dev/kvm is kvm_pvm, a paravirtual nested KVM that cannot run stock kernels: "
            "Firecracker needs hardware KVM (kvm_intel or kvm_amd)"
        )
    elif not loaded & {"kvm_intel", "kvm_amd"}:
        reasons.append("neither kvm_intel nor kvm_amd is loaded: no hardware KVM")
    elif not os.access("/dev/kvm", os.R_OK | os.W_OK):
        reasons.append("/dev/kvm is not readable and writable by this user (add it to the kvm group)")
    firecracker = shutil.which("firecracker")
    if not firecracker:
        reasons.append("no `firecracker` on PATH (install v1.15.1 or later: docs/firecracker.md)")
    else:
        out = subprocess.run([firecracker, "--version"], capture_output=True, text=True).stdout
        version = release_of(out)
        if version is None or version < (1, 15, 1):
            reasons.append(f"{firecracker} reports {out.strip()!r}: the smoke test needs v1.15.1 or later")
        elif version == (1, 16, 0):
            reasons.append("Firecracker v1.16.0 restores VMs with a broken vsock (firecracker#5969)")
    if not os.access(EMBERD, os.X_OK):
        reasons.append(f"{EMBERD} is missing: `make build`")
    if not os.path.exists(os.path.join(DATA, "manifest.json")):
        reasons.append(f"no images in {DATA}: `make images`")
    if reasons:
        fail_preflight(reasons)


class Daemon:
    """`emberd serve --backend firecracker` on a free port with its own dirs."""

    def __init__(self, root, snapshots):
        self.work = os.path.join(root, "work-snap" if snapshots else "work")
        self.data = os.path.join(root, "data")
        if not os.path.exists(self.data):
            os.makedirs(self.data)
            # Share the built images; templates stay in this data dir.
            for name in ("manifest.json", "blobs"):
                os.symlink(os.path.join(DATA, name), os.path.join(self.data, name))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log_path = os.path.join(root, f"emberd-{self.port}.log")
        args = [
            EMBERD, "serve", "--backend", "firecracker",
            "--addr", f"127.0.0.1:{self.port}", "--data-dir", self.data, "--work-dir", self.work,
            "--pool-size", "0", "--snapshots", "true" if snapshots else "false", "--skip-warm",
            "--max-concurrent-boots", str(CLONES), "--max-sandboxes", str(4 * CLONES),
            "--max-guest-memory-mib", str(1024 * CLONES),
        ]
        env = dict(os.environ, EMBERD_LOG="emberd=debug")
        self.proc = subprocess.Popen(args, stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                self.get("/healthz")
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise SystemExit(f"emberd exited: see {self.log_path}")
                time.sleep(0.1)
        raise SystemExit(f"emberd never answered: see {self.log_path}")

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                text = r.read().decode()
                return r.status, (json.loads(text) if text else None)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read().decode() or "null")

    def get(self, path):
        return self.call("GET", path)[1]

    def create(self):
        status, body = self.call("POST", "/sandboxes", {"language_pack": PACK})
        if status != 201:
            raise RuntimeError(f"create: {status} {body}")
        return body["id"]

    def run(self, sandbox, code, user=None):
        body = {"code": code}
        if user:
            body["user"] = user
        return self.call("POST", f"/sandboxes/{sandbox}/exec", body)[1]

    def log(self):
        return re.sub(r"\x1b\[[0-9;]*m", "", open(self.log_path).read())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def dial(path, line, bound=10.0):
    """Sends `line` on hybrid vsock `path`; the answer line and seconds taken."""
    started = time.time()
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(bound)
    s.connect(path)
    s.sendall(line.encode())
    answer = b""
    try:
        while not answer.endswith(b"\n"):
            chunk = s.recv(1)
            if not chunk:
                break
            answer += chunk
    except socket.timeout:
        pass
    s.close()
    return answer.decode().strip() or None, time.time() - started


def cold_boot(root):
    daemon = Daemon(root, snapshots=False)
    try:
        started = time.time()
        sandbox = daemon.create()
        row("cold boot (snapshots off)", True, f"create answered in {time.time() - started:.2f} s")
        doctor = subprocess.run([EMBERD, "doctor", "--data-dir", DATA], capture_output=True, text=True).stdout
        entry = next((l.split(" ", 1)[1].strip() for l in doctor.splitlines() if "boot entry" in l), "not reported")
        row("  boot entry", "PVH" in entry, entry)
        probe = daemon.run(sandbox, "ls /sys/bus/acpi/devices | grep -c LNRO0005; "
                           "ls /sys/bus/platform/drivers/virtio-mmio | grep -c LNRO0005; "
                           "test -b /dev/vda && echo vda", user="root")
        lines = (probe.get("stdout") or "").split()
        row("  ACPI found the virtio-mmio devices", len(lines) > 0 and lines[0] not in ("", "0"), f"{lines[:1]} LNRO0005 devices")
        row("  virtio-mmio bound", len(lines) > 1 and lines[1] != "0", f"{lines[1:2]} bound to virtio-mmio")
        row("  /dev/vda present", "vda" in lines, "block device" if "vda" in lines else probe)
        vsock = os.path.join(daemon.work, sandbox, "v.sock")
        answer, took = dial(vsock, "CONNECT 1024\n")
        row("  agent listening (CONNECT after boot)", bool(answer and answer.startswith("OK ")), f"{answer!r} in {took * 1000:.0f} ms")
        m = re.findall(r"elapsed_ms=(\d+)[^\n]*agent session open|agent session open[^\n]*elapsed_ms=(\d+)", daemon.log())
        ms = next((a or b for a, b in m), None)
        row("  InstanceStart → first OK", ms is not None, f"{ms} ms" if ms else "no 'agent session open' line in the log")
        answer, took = dial(vsock, "connect 52\n")
        row("  CONNECT to a port nobody listens on", answer is None, f"closed after {took * 1000:.0f} ms")
        started = time.time()
        status, _ = daemon.call("DELETE", f"/sandboxes/{sandbox}")
        row("stop", status == 204, f"DELETE {status} in {time.time() - started:.2f} s")
        log = daemon.log()
        ignored = "ignored Ctrl-Alt-Del" in log
        row("  Ctrl-Alt-Del ends Firecracker", not ignored, "stopped by signal after the grace" if ignored else "clean exit")
    finally:
        daemon.stop()


def early_connect(root):
    """CONNECT sent right after InstanceStart, before the guest agent is up."""
    manifest = json.load(open(os.path.join(DATA, "manifest.json")))
    blob = lambda p: p if os.path.isabs(p) else os.path.join(DATA, p)
    d = tempfile.mkdtemp(dir=root)
    api = os.path.join(d, "fc.sock")
    proc = subprocess.Popen(["firecracker", "--api-sock", api, "--id", "smoke"], cwd=d,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not os.path.exists(api):
            time.sleep(0.01)

        def put(path, body):
            s = socket.socket(socket.AF_UNIX)
            s.connect(api)
            payload = json.dumps(body)
            s.sendall(f"PUT {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(payload)}\r\n\r\n{payload}".encode())
            status = s.recv(4096).decode().split(" ")[1]
            s.close()
            if not status.startswith("2"):
                raise RuntimeError(f"PUT {path}: {status}")

        put("/logger", {"log_path": "fc.log", "level": "Warning"})
        put("/boot-source", {"kernel_image_path": blob(manifest["kernel"]["vmlinux"]),
                             "initrd_path": blob(manifest["initramfs"]),
                             "boot_args": "console=ttyS0 reboot=k panic=1 pci=off quiet"})
        put("/drives/rootfs", {"drive_id": "rootfs", "path_on_host": blob(manifest["packs"][PACK]["squashfs"]),
                               "is_root_device": False, "is_read_only": True})
        put("/machine-config", {"vcpu_count": 1, "mem_size_mib": 256})
        put("/vsock", {"guest_cid": 3, "uds_path": "v.sock"})
        put("/entropy", {})
        put("/actions", {"action_type": "InstanceStart"})
        answer, took = dial(os.path.join(d, "v.sock"), "CONNECT 1024\n")
        row("CONNECT before the agent is up", True,
            f"{answer!r} after {took * 1000:.0f} ms" if answer else f"closed after {took * 1000:.0f} ms (retried by the daemon)")
        started = time.time()
        put("/actions", {"action_type": "SendCtrlAltDel"})
        try:
            code = proc.wait(timeout=5)
            row("  exit on Ctrl-Alt-Del", code == 0, f"status {code} in {time.time() - started:.2f} s")
        except subprocess.TimeoutExpired:
            row("  exit on Ctrl-Alt-Del", False, "still running 5 s later")
    finally:
        if proc.poll() is None:
            proc.terminate()
            code = proc.wait()
            row("  exit on SIGTERM", code == -15, f"returncode {code}")


def templates(root):
    daemon = Daemon(root, snapshots=True)
    try:
        daemon.run(daemon.create(), "true")
        deadline = time.time() + 120
        snapdir = os.path.join(daemon.data, "snapshots")
        while time.time() < deadline:
            done = [n for n in os.listdir(snapdir)] if os.path.isdir(snapdir) else []
            if any(n.startswith(f"{PACK}-") for n in done):
                break
            time.sleep(0.5)
        else:
            row("template", False, "no template within 120 s")
            return
        template = next(os.path.join(snapdir, n) for n in os.listdir(snapdir) if n.startswith(f"{PACK}-"))
        mem = os.path.getsize(os.path.join(template, "vm.mem"))
        want = daemon.get("/info")["guest_ram_mib"] << 20 if "guest_ram_mib" in daemon.get("/info") else None
        row("template", True, f"{template}")
        row("  memory file size", want is None or mem == want, f"{mem} bytes (guest memory {want})")

        def clone(_):
            started = time.time()
            sandbox = daemon.create()
            took = time.time() - started
            out = daemon.run(sandbox, "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s")
            info = daemon.get(f"/sandboxes/{sandbox}")
            return sandbox, took, info.get("boot_path"), (out.get("stdout") or "").split()

        with concurrent.futures.ThreadPoolExecutor(CLONES) as pool:
            clones = list(pool.map(clone, range(CLONES)))
        restored = [c for c in clones if c[2] == "snapshot-restore"]
        answered = [c for c in clones if len(c[3]) == 2]
        rands = {c[3][0] for c in answered}
        skews = [abs(int(c[3][1]) - time.time()) for c in answered]
        took = sorted(c[1] for c in clones)
        row(f"{CLONES} concurrent restores", len(restored) == CLONES,
            f"{len(restored)} restored, create p50 {took[len(took) // 2]:.2f} s, max {took[-1]:.2f} s")
        row("  every clone answers", len(answered) == CLONES, f"{len(answered)}/{CLONES}")
        row("  different randomness after identity", len(rands) == len(answered), f"{len(rands)} distinct of {len(answered)}")
        row("  wall clock", bool(skews) and max(skews) < 5, f"max skew {max(skews):.1f} s" if skews else "no clock read")

        # A corrupted snapshot: same size, other bytes.
        state = os.path.join(template, "vm.snap")
        with open(state, "r+b") as f:
            f.seek(os.path.getsize(state) // 2)
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0xFF]))
        before = daemon.log().count("template snapshot ready")
        sandbox = daemon.create()
        path = daemon.get(f"/sandboxes/{sandbox}").get("boot_path")
        log = daemon.log()
        cause = next((l for l in log.splitlines() if "restore from the template failed" in l), "")
        row("corrupted snapshot", path == "cold-boot", f"fell back to {path}")
        row("  the error names the cause", "fc.log" in cause or "snapshot" in cause, cause[-200:] or "no log line")
        time.sleep(10)
        rebuilt = daemon.log().count("template snapshot ready") - before
        row("  no rebuild loop", rebuilt <= 1, f"{rebuilt} rebuild(s) in 10 s")
    finally:
        daemon.stop()


def main():
    preflight()
    root = tempfile.mkdtemp(prefix="emberd-smoke-", dir="/tmp")
    for section in (cold_boot, early_connect, templates):
        try:
            section(root)
        except Exception as e:  # noqa: BLE001 - every failure is a row
            row(section.__name__, False, f"{type(e).__name__}: {e}")
    width = max(len(r[0]) for r in ROWS)
    print(f"{'check'.ljust(width)}  result  detail")
    for check, result, detail in ROWS:
        print(f"{check.ljust(width)}  {result.ljust(6)}  {detail}")
    print(f"logs and work dirs: {root}")
    sys.exit(0 if all(r[1] == "ok" for r in ROWS) else 1)


if __name__ == "__main__":
    main()
