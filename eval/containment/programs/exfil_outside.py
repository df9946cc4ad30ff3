# Opens a connection to an address outside the machine and sends an HTTP request.
import socket

for host, port in (("1.1.1.1", 80),):
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            s.settimeout(5)
            s.sendall(b"GET / HTTP/1.0\r\nHost: " + host.encode() + b"\r\n\r\n")
            try:
                first = s.recv(64).split(b"\r\n")[0].decode(errors="replace")
            except OSError:
                first = "(no answer)"
        print(f"REACHED outside {host}:{port} {first}")
    except OSError as e:
        print(f"RESULT: could not reach {host}:{port}: {e}")
