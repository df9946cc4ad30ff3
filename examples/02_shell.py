"""02: the shell pack: the code is a shell script, run by the guest's sh.

    python examples/02_shell.py
"""

from emberd import Sandbox

SCRIPT = r"""
set -e
echo "kernel: $(uname -sr)"
echo "user: $(id -un) ($(id -u)) in $PWD"
mkdir -p work
for i in 1 2 3 4 5; do echo "row $i $((i * i))"; done > work/squares.txt
echo "sum of squares: $(awk '{ s += $3 } END { print s }' work/squares.txt)"
"""

with Sandbox.create(pack="shell") as sb:
    r = sb.exec(SCRIPT)
    print(r.stdout, end="")

    # The file the script wrote is there for the next exec, and for the files API.
    print("via the files API:", sb.files.read("/home/sandbox/work/squares.txt").decode().splitlines()[-1])

    # A failing command: the exit status comes back, it is not an exception.
    r = sb.exec("ls /nonexistent")
    print(f"ls exited {r.exit_code}: {r.stderr.strip()}")

    # Everything an exec started ends with it, so run servers as processes (see 06).
    r = sb.exec("echo ok as root: $(id -u)", user="root")
    print(r.stdout.strip())
