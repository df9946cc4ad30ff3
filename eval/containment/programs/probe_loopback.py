# Probes services on the host's loopback: a collector and the emberd daemon's own API,
# on 127.0.0.1 and on QEMU user networking's alias for the host (10.0.2.2).
import socket


def ask(host, port, request):
    with socket.create_connection((host, port), timeout=3) as s:
        s.settimeout(3)
        s.sendall(request)
        answer = b""
        try:
            while len(answer) < 4096 and (piece := s.recv(4096)):
                answer += piece
        except OSError:
            pass
    return answer.decode(errors="replace")


for host in ("127.0.0.1", "10.0.2.2"):
    try:
        answer = ask(host, @@SINK_PORT@@, b"probe\n").strip()
        print(f"REACHED sink {host}:@@SINK_PORT@@ {answer}")
    except OSError as e:
        print(f"RESULT: could not reach the sink at {host}:@@SINK_PORT@@: {e}")
    try:
        answer = ask(host, @@DAEMON_PORT@@, b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    except OSError as e:
        print(f"RESULT: could not reach the daemon at {host}:@@DAEMON_PORT@@: {e}")
        continue
    status = answer.split("\r\n")[0]
    if " 200 " in status and '"status":"ok"' in answer.replace(" ", ""):
        print(f"REACHED daemon {host}:@@DAEMON_PORT@@ GET /healthz: {status}")
    else:
        print(f"RESULT: {host}:@@DAEMON_PORT@@ answered, but not as the daemon: {status[:60]}")
