# emberd's Python fork server: an interpreter that has already started and
# imported the common modules forks a fresh child per exec.
#
# Protocol, one Unix-socket connection per exec: the agent sends one JSON line
# {"path", "cwd", "env", and optionally "cgroup_procs", "ids": [uid, gid],
# "max_processes"} with three descriptors (stdin, stdout, stderr) as
# SCM_RIGHTS; the server forks and answers {"pid": N}; the child joins the
# cgroup and drops to uid/gid (no supplementary groups, RLIMIT_NPROC set)
# before it runs any code. While the child runs the agent may send
# {"signal": number} lines: the server signals the child's process group
# while the child is unreaped (never a pid that may have been reused). When
# the child ends the server kills what is left of its group, reaps it, sends
# {"exit": code} or {"signal": number} and closes the connection.
# Single-threaded (selectors + SIGCHLD wake-ups), so fork never copies a
# lock held by another thread, and reaping never races a signal.
import array, json, os, resource, selectors, signal, socket, sys

# What a typical exec imports, paid for once here instead of in every child.
import atexit, collections, datetime, functools, io, itertools, math, random, re, runpy, subprocess, time, traceback  # noqa: E401,F401

SOCKET_PATH = sys.argv[1]


def become_user(request):
    procs = request.get("cgroup_procs")
    if procs:
        with open(procs, "w") as f:
            f.write("0")
    ids = request.get("ids")
    if ids:
        uid, gid = ids
        limit = request.get("max_processes")
        if limit:
            resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid or os.getgroups():
            raise OSError("the user switch did not hold")


def run_child(request, fds):
    os.setpgid(0, 0)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        if fd > 2:
            os.close(fd)
    try:
        become_user(request)
    except BaseException as e:
        os.write(2, f"emberd: cannot run as the exec's user: {e}\n".encode())
        os._exit(126)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    path = request["path"]
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="surrogateescape")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace", write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", write_through=True)
    sys.argv = [path]
    sys.path[0] = os.path.dirname(path)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.set_wakeup_fd(-1)
    code = 0
    try:
        with open(path, "rb") as f:
            source = f.read()
        main = type(sys)("__main__")
        main.__file__ = path
        main.__builtins__ = __builtins__
        sys.modules["__main__"] = main
        exec(compile(source, path, "exec"), main.__dict__)
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code & 0xFF
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException as e:
        # As the interpreter prints it: without this server's own frame.
        tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
        traceback.print_exception(type(e), e, tb)
        code = 130 if isinstance(e, KeyboardInterrupt) else 1
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def main():
    try:
        os.unlink(SOCKET_PATH)
    except FileNotFoundError:
        pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(SOCKET_PATH + ".tmp")
    os.rename(SOCKET_PATH + ".tmp", SOCKET_PATH)
    server.listen(64)
    server.setblocking(False)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ, "accept")
    selector.register(wake_r, selectors.EVENT_READ, "sigchld")
    children = {}
    while True:
        for key, _ in selector.select():
            if key.data == "accept":
                try:
                    conn, _ = server.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(True)
                fds = array.array("i")
                try:
                    msg, ancdata, _, _ = conn.recvmsg(1 << 16, socket.CMSG_LEN(3 * fds.itemsize))
                    for level, kind, data in ancdata:
                        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
                    request = json.loads(msg.decode())
                    if len(fds) != 3:
                        raise ValueError("expected three descriptors")
                except Exception as e:  # a bad request loses only its connection
                    for fd in fds:
                        os.close(fd)
                    try:
                        conn.sendall((json.dumps({"error": str(e)}) + "\n").encode())
                    finally:
                        conn.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    server.close()
                    conn.close()
                    os.close(wake_r)
                    os.close(wake_w)
                    # Other execs' connections: not this child's to touch.
                    for other in children.values():
                        other.close()
                    run_child(request, list(fds))
                # Also here, so the group exists before the agent learns the pid.
                try:
                    os.setpgid(pid, pid)
                except OSError:
                    pass
                for fd in fds:
                    os.close(fd)
                children[pid] = conn
                conn.sendall((json.dumps({"pid": pid}) + "\n").encode())
                selector.register(conn, selectors.EVENT_READ, ("signals", pid))
            elif isinstance(key.data, tuple):
                conn, pid = key.fileobj, key.data[1]
                try:
                    data = conn.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(conn)
                    continue
                for line in data.splitlines():
                    try:
                        number = int(json.loads(line)["signal"])
                    except (ValueError, KeyError, TypeError):
                        continue
                    if pid in children:
                        try:
                            os.killpg(pid, number)
                        except OSError:
                            pass
            else:
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
                while True:
                    # Look before reaping: while the child is a zombie its
                    # group id cannot be anyone else's.
                    try:
                        info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                    except ChildProcessError:
                        break
                    if info is None or info.si_pid == 0:
                        break
                    pid = info.si_pid
                    if pid in children:
                        try:
                            os.killpg(pid, signal.SIGKILL)
                        except OSError:
                            pass
                    _, status = os.waitpid(pid, 0)
                    conn = children.pop(pid, None)
                    if conn is None:
                        continue
                    try:
                        selector.unregister(conn)
                    except (KeyError, ValueError):
                        pass
                    if os.WIFSIGNALED(status):
                        reply = {"signal": os.WTERMSIG(status)}
                    else:
                        reply = {"exit": os.WEXITSTATUS(status)}
                    try:
                        conn.sendall((json.dumps(reply) + "\n").encode())
                    except OSError:
                        pass
                    conn.close()


main()
