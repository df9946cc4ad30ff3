//! Least privilege inside the guest, with real VMs: code runs as the
//! unprivileged `sandbox` user unless an exec asks for root, root-only
//! surfaces are out of its reach, and fork bombs, memory bombs and disk
//! fills by that user stay inside the exec that made them.
//!
//! These tests need the images built by `make images`. They fail, never
//! skip, when a VM does not come up.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;

const WHO_CODE: &str = "import os
print(os.getuid(), os.getgid(), os.getgroups(), os.getcwd(), os.environ['HOME'], os.environ['USER'])";

/// Tries to open the guest's root-only surfaces for writing (the block
/// device for reading too) and prints what happened to each.
const ROOT_SURFACES_CODE: &str = "import glob, os
paths = ['/proc/sysrq-trigger', '/dev/vda', '/dev/mem', '/dev/kmem', '/dev/port', '/dev/console',
         '/dev/ttyS0', '/dev/hvc0', '/dev/kmsg'] + sorted(glob.glob('/dev/vport*'))
for path in paths:
    for flags in ([os.O_WRONLY, os.O_RDONLY] if path == '/dev/vda' else [os.O_WRONLY]):
        try:
            os.close(os.open(path, flags))
            result = 'open'
        except PermissionError:
            result = 'denied'
        except FileNotFoundError:
            result = 'absent'
        except OSError as e:
            result = f'error {e.errno}'
        print(path, flags, result)";

#[tokio::test]
async fn code_runs_as_the_sandbox_user_unless_it_asks_for_root() {
    let daemon = support::start(&[]);
    let api = support::api(&daemon);
    let (python, shell, node) = tokio::join!(
        api.create("python"),
        api.create("shell"),
        api.create("node")
    );

    let out = api.exec(&python, WHO_CODE).await;
    assert_eq!(
        out.stdout, "1000 1000 [] /home/sandbox /home/sandbox sandbox\n",
        "{out:?}"
    );
    let root = json!({ "code": WHO_CODE, "user": "root" });
    let out = api.exec_with(&python, root).await;
    assert_eq!(out.stdout, "0 0 [] / /root root\n", "{out:?}");
    // The pre-started interpreter's children (whose parent is the fork
    // server, not PID 1) drop to the sandbox user too.
    api.wait_for_output(
        &python,
        "import os; print(os.getuid(), os.getgroups(), os.getppid() != 1)",
        "1000 [] True\n",
        Duration::from_secs(60),
    )
    .await;
    let out = api
        .exec_with(
            &python,
            json!({ "code": "import os; print(os.getuid(), os.getppid() != 1)", "user": "root" }),
        )
        .await;
    assert_eq!(out.stdout, "0 True\n", "{out:?}");

    let out = api.exec(&shell, "id -u; id -un; id -G; pwd").await;
    assert_eq!(
        out.stdout, "1000\nsandbox\n1000\n/home/sandbox\n",
        "{out:?}"
    );
    let out = api
        .exec_with(&shell, json!({ "code": "id -u", "user": "root" }))
        .await;
    assert_eq!(out.stdout, "0\n", "{out:?}");

    // The spare node runs as the sandbox user; a root exec goes one-shot.
    for _ in 0..2 {
        let out = api
            .exec(&node, "console.log(process.getuid(), process.getgid())")
            .await;
        assert_eq!(out.stdout, "1000 1000\n", "{out:?}");
    }
    let root = json!({ "code": "console.log(process.getuid())", "user": "root" });
    assert_eq!(api.exec_with(&node, root).await.stdout, "0\n");

    let (status, body) = api
        .exec_raw(&python, &json!({ "code": "print(1)", "user": "daemon" }))
        .await;
    assert_eq!(status, 400, "{body}");

    // Root-only surfaces: out of the sandbox user's reach, within root's
    // (so the check itself can tell the difference).
    let out = api.exec(&python, ROOT_SURFACES_CODE).await;
    assert_eq!(out.exit_code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    for must_exist in [
        "/proc/sysrq-trigger 1 denied",
        "/dev/vda 1 denied",
        "/dev/vda 0 denied",
    ] {
        assert!(lines.contains(&must_exist), "{must_exist}: {out:?}");
    }
    assert!(
        lines
            .iter()
            .all(|l| l.ends_with("denied") || l.ends_with("absent")),
        "{out:?}"
    );
    let root = json!({ "code": ROOT_SURFACES_CODE, "user": "root" });
    let out = api.exec_with(&python, root).await;
    assert!(out.stdout.contains("/proc/sysrq-trigger 1 open"), "{out:?}");
    assert!(out.stdout.contains("/dev/vda 0 open"), "{out:?}");

    for id in [python, shell, node] {
        assert_eq!(api.delete(&id).await, 204);
    }
}

/// Counts the guest's processes of the sandbox user, waiting up to 10 s for
/// them to go (run as root, so the count leaves out the counter itself;
/// shell builtins only, so a count forks nothing).
const SANDBOX_PROCESSES_CODE: &str = "count() {
  n=0
  for d in /proc/[0-9]*; do
    while read -r key uid rest; do
      if [ \"$key\" = Uid: ]; then [ \"$uid\" = 1000 ] && n=$((n + 1)); break; fi
    done 2>/dev/null < \"$d/status\"
  done
}
deadline=$(( $(date +%s) + 10 ))
count
while [ $n != 0 ] && [ $(date +%s) -lt $deadline ]; do sleep 0.2; count; done
echo \"left: $n\"";

#[tokio::test]
async fn fork_bombs_memory_bombs_and_disk_fills_stay_in_the_guest() {
    // A writable layer well under the guest's memory: a full disk then
    // leaves memory for the next exec.
    let daemon = support::start(&["--overlay-mib", "64"]);
    let api = support::api(&daemon);
    let (shell, python) = tokio::join!(api.create("shell"), api.create("python"));
    let left = || async {
        let count =
            json!({ "code": SANDBOX_PROCESSES_CODE, "user": "root", "timeout_ms": 120_000 });
        api.exec_with(&shell, count).await
    };

    // A process that leaves the exec's process group and session goes with
    // the exec all the same.
    let out = api
        .exec(
            &shell,
            "setsid sleep 600 >/dev/null 2>&1 < /dev/null & echo started",
        )
        .await;
    assert_eq!(out.stdout, "started\n", "{out:?}");
    assert_eq!(left().await.stdout, "left: 0\n");

    let started = Instant::now();
    let bomb = json!({ "code": "bomb() { bomb | bomb & }; bomb; sleep 600", "timeout_ms": 5000 });
    let out = api.exec_with(&shell, bomb).await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the fork bomb held the exec for {:?}: {out:?}",
        started.elapsed()
    );
    assert_eq!(left().await.stdout, "left: 0\n");
    assert_eq!(api.exec(&shell, "echo alive").await.stdout, "alive\n");

    let memory_bomb = "chunks = []\nwhile True:\n    chunks.append(bytearray(8 << 20))";
    let out = api
        .exec_with(
            &python,
            json!({ "code": memory_bomb, "timeout_ms": 60_000 }),
        )
        .await;
    // Killed out of memory, well before its timeout.
    assert_eq!(out.error.as_deref(), Some("killed by signal 9"), "{out:?}");
    assert_eq!(api.exec(&python, "print('alive')").await.stdout, "alive\n");

    // Every place the sandbox user can write shares the one size cap; the
    // next exec (whose code file lives elsewhere) still runs.
    let fill =
        "cat /dev/zero > /tmp/fill; cat /dev/zero > $HOME/fill; cat /dev/zero > /dev/shm/fill; \
                echo full";
    let out = api
        .exec_with(&shell, json!({ "code": fill, "timeout_ms": 60_000 }))
        .await;
    assert!(out.stdout.ends_with("full\n"), "{out:?}");
    assert!(out.stderr.contains("No space left"), "{out:?}");
    let out = api
        .exec(
            &shell,
            "du -sm /tmp/fill $HOME/fill /dev/shm/fill | awk '{s += $1} END {print s}'",
        )
        .await;
    let filled: u32 = out
        .stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{out:?}"));
    assert!(
        (32..=64).contains(&filled),
        "{filled} MiB written to a 64 MiB layer: {out:?}"
    );
    assert_eq!(api.exec(&shell, "echo alive").await.stdout, "alive\n");
    assert_eq!(api.exec(&python, "print('alive')").await.stdout, "alive\n");

    assert_eq!(api.delete(&shell).await, 204);
    assert_eq!(api.delete(&python).await, 204);
}
