//! emberctl end to end: the real `emberd` (next to the emberctl binary)
//! booting a real VM (QEMU/TCG here, or `EMBERD_TEST_BACKEND`), with a
//! bearer token, driven only through emberctl's commands: a streamed exec,
//! a background process followed and killed, files and directories copied
//! both ways, and a shell on a terminal fed from a pipe.
//!
//! Needs the images built by `make images` and the emberd binary built
//! (`cargo build -p emberd`, done by `make test`); fails, never skips, when
//! either is missing or the VM does not come up.

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "emberctl-e2e-token";
/// Generous: every command here ends in seconds under TCG.
const COMMAND_BOUND: Duration = Duration::from_secs(120);

struct Ctl {
    addr: String,
}

impl Ctl {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_emberctl"));
        command
            .args(args)
            .env("EMBERD_ADDR", &self.addr)
            .env("EMBERD_TOKEN", TOKEN);
        command
    }

    /// Runs emberctl to its end (within [`COMMAND_BOUND`]) with `stdin`;
    /// returns its status, stdout and stderr.
    fn run_with(&self, args: &[&str], stdin: &[u8]) -> (ExitStatus, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let (out, err, input) = (
            dir.path().join("out"),
            dir.path().join("err"),
            dir.path().join("in"),
        );
        std::fs::write(&input, stdin).unwrap();
        let mut child = self
            .command(args)
            .stdin(std::fs::File::open(&input).unwrap())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let status = wait_bounded(&mut child, args);
        let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
        (status, read(&out), read(&err))
    }

    fn run(&self, args: &[&str]) -> (ExitStatus, String, String) {
        self.run_with(args, b"")
    }

    /// Runs emberctl and insists that it succeeds; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let (status, out, err) = self.run(args);
        assert!(
            status.success(),
            "emberctl {args:?}: {status}\nstdout: {out}\nstderr: {err}"
        );
        out
    }
}

fn wait_bounded(child: &mut Child, args: &[&str]) -> ExitStatus {
    let deadline = Instant::now() + COMMAND_BOUND;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("emberctl {args:?} did not end within {COMMAND_BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_daemon() -> emberd_harness::Daemon {
    let ctl = PathBuf::from(env!("CARGO_BIN_EXE_emberctl"));
    let emberd = ctl.with_file_name("emberd");
    assert!(
        emberd.exists(),
        "{} is missing: build it first (`cargo build -p emberd`)",
        emberd.display()
    );
    let backend = std::env::var("EMBERD_TEST_BACKEND").unwrap_or_else(|_| "qemu".into());
    emberd_harness::Daemon::builder(emberd)
        .backend(backend)
        .token(TOKEN)
        .args([
            "--boot-timeout",
            "60s",
            "--pool-size",
            "0",
            "--snapshots",
            "false",
        ])
        .start()
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn emberctl_drives_a_real_sandbox() {
    let daemon = start_daemon();
    let ctl = Ctl {
        addr: daemon.base_url(),
    };
    let id = ctl.ok(&["create", "--pack", "python"]).trim().to_owned();

    // A streamed exec: the first line is out while the program still runs.
    let mut child = ctl
        .command(&[
            "exec",
            &id,
            "import time\nprint('first', flush=True)\ntime.sleep(3)\nprint('second')",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    lines.read_line(&mut first).unwrap();
    assert_eq!(first, "first\n");
    assert!(
        child.try_wait().unwrap().is_none(),
        "emberctl exec ended before the program's second line: the output was not streamed"
    );
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut lines, &mut rest).unwrap();
    assert_eq!(rest, "second\n");
    assert!(wait_bounded(&mut child, &["exec"]).success());
    let (status, _, _) = ctl.run(&["exec", &id, "raise SystemExit(3)"]);
    assert_eq!(status.code(), Some(3));

    // A background process: followed, then killed; `logs -f` exits as it did.
    let pid = ctl.ok(&["start", &id, "--", "sh", "-c", "echo ready; exec sleep 600"]);
    let pid = pid.trim();
    let mut follow = ctl
        .command(&["logs", &id, pid, "-f"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut followed = BufReader::new(follow.stdout.take().unwrap());
    let mut line = String::new();
    followed.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let listed = ctl.ok(&["ps", &id]);
    assert!(
        listed.contains(pid) && listed.contains("running"),
        "{listed}"
    );
    ctl.ok(&["kill", &id, pid]);
    assert_eq!(
        wait_bounded(&mut follow, &["logs", "-f"]).code(),
        Some(128 + 15)
    );
    assert_eq!(ctl.ok(&["logs", &id, pid]), "ready\n");
    let listed = ctl.ok(&["ps", &id]);
    assert!(listed.contains("signal 15"), "{listed}");

    // Files: one with its mode, and a tree with a symlink and a file bigger
    // than every buffer on the way, up and back down.
    let local = tempfile::tempdir().unwrap();
    let tree = local.path().join("tree");
    std::fs::create_dir_all(tree.join("sub/empty")).unwrap();
    std::fs::write(tree.join("sub/note.txt"), b"hello\n").unwrap();
    let big: Vec<u8> = (0..6 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(tree.join("big.bin"), &big).unwrap();
    std::os::unix::fs::symlink("sub/note.txt", tree.join("link")).unwrap();
    let script = local.path().join("run.sh");
    std::fs::write(&script, b"#!/bin/sh\necho from-script\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o750)).unwrap();

    ctl.ok(&["cp", script.to_str().unwrap(), &format!("{id}:/tmp/")]);
    let run_script = "import subprocess\nprint(subprocess.run(['/tmp/run.sh'], capture_output=True, text=True).stdout, end='')";
    assert_eq!(ctl.ok(&["exec", &id, run_script]), "from-script\n");
    ctl.ok(&["cp", tree.to_str().unwrap(), &format!("{id}:/tmp/tree")]);
    let back = local.path().join("back");
    ctl.ok(&["cp", &format!("{id}:/tmp/tree"), back.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(back.join("sub/note.txt")).unwrap(),
        b"hello\n"
    );
    assert!(
        std::fs::read(back.join("big.bin")).unwrap() == big,
        "big.bin changed on the way"
    );
    assert!(back.join("sub/empty").is_dir());
    assert_eq!(
        std::fs::read_link(back.join("link")).unwrap(),
        Path::new("sub/note.txt")
    );
    let copy = local.path().join("copy.sh");
    ctl.ok(&["cp", &format!("{id}:/tmp/run.sh"), copy.to_str().unwrap()]);
    let mode = std::fs::metadata(&copy).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o750);
    let missing = format!("{id}:/tmp/no-such-file");
    let (status, _, err) = ctl.run(&["cp", &missing, local.path().to_str().unwrap()]);
    assert_eq!(status.code(), Some(1));
    assert!(
        err.starts_with("emberctl: ") && err.contains("no such file"),
        "{err}"
    );

    // A shell on a terminal, its input from a pipe: the commands run and
    // emberctl exits with the shell's status.
    let (status, out, err) = ctl.run_with(&["shell", &id], b"echo shell-$((6*7))\nexit 3\n");
    assert!(out.contains("shell-42"), "stdout: {out}\nstderr: {err}");
    assert_eq!(status.code(), Some(3), "stdout: {out}\nstderr: {err}");

    ctl.ok(&["rm", &id]);
}
