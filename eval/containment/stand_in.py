"""The parent of a host run: stands in for the agent that runs the code it was given.

    stand_in.py [--cgroup PROCS_FILE] [--nproc N] [--tmpfs DIR --tmpfs-mib M] --report FILE -- PROGRAM...

Joins the run's pids cgroup (or sets RLIMIT_NPROC), mounts a small tmpfs over DIR when
asked (it runs in a private mount namespace then), runs PROGRAM as its child, waits for it
and writes a JSON report: the child's exit status and, with --tmpfs, the space left there.
An action that kills its parent kills this process, which the eval sees as its signal death.
Run as a script by the eval; imports nothing from it.
"""

import argparse
import json
import os
import resource
import subprocess
import sys


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--cgroup")
    p.add_argument("--nproc", type=int)
    p.add_argument("--tmpfs")
    p.add_argument("--tmpfs-mib", type=int, default=32)
    p.add_argument("--report", required=True)
    p.add_argument("program", nargs=argparse.REMAINDER)
    a = p.parse_args()
    program = a.program[1:] if a.program[:1] == ["--"] else a.program
    if a.cgroup:
        with open(a.cgroup, "w") as f:
            f.write(str(os.getpid()))
    if a.nproc:
        resource.setrlimit(resource.RLIMIT_NPROC, (a.nproc, a.nproc))
    if a.tmpfs:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={a.tmpfs_mib}m,mode=0777", "emberd-eval-disk", a.tmpfs],
            check=True,
        )
        os.chdir(a.tmpfs)  # the child's working directory is the tmpfs, not what it covers
    status = subprocess.call(program)
    report: dict[str, object] = {"exit": status}
    if a.tmpfs:
        st = os.statvfs(a.tmpfs)
        report["tmpfs_avail"] = st.f_bavail * st.f_frsize
        report["tmpfs_size"] = st.f_blocks * st.f_frsize
    with open(a.report, "w") as f:
        json.dump(report, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
