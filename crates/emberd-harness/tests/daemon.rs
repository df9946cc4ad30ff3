//! The harness against a stand-in `emberd`: a Python script that serves
//! `GET /healthz` on the `--addr` it is given, logs its command line, and
//! can start a "VM" (a process naming the work dir), exit at once, or never
//! serve. No VM, so these run in a second.

use std::path::{Path, PathBuf};
use std::time::Duration;

use emberd_harness::{is_alive, Daemon, HarnessError};
use nix::sys::signal::Signal;

const FAKE_EMBERD: &str = r#"#!/usr/bin/env python3
import http.server, os, signal, subprocess, sys
args = sys.argv[1:]
work_dir = args[args.index('--work-dir') + 1]
host, port = args[args.index('--addr') + 1].rsplit(':', 1)
mode = os.environ.get('FAKE_MODE', 'serve')
print('argv:', ' '.join(args), file=sys.stderr)
print('EMBERD_LOG:', os.environ.get('EMBERD_LOG'), file=sys.stderr)
print('REMOVED:', os.environ.get('REMOVED'), file=sys.stderr, flush=True)
if mode == 'exit':
    print('told to exit', file=sys.stderr)
    sys.exit(3)
if mode == 'vm':
    os.makedirs(work_dir, exist_ok=True)
    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', work_dir])
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
if mode == 'mute':
    signal.pause()
class Health(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_GET(self):
        body = b'{"status":"ok"}'
        self.send_response(200 if self.path == '/healthz' else 404)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer((host, int(port)), Health).serve_forever()
"#;

/// Writes the stand-in to `dir` and returns its path.
fn fake_emberd(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("emberd");
    std::fs::write(&path, FAKE_EMBERD).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn a_daemon_gets_its_flags_and_environment_and_is_stopped_on_drop() {
    let bin_dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::builder(fake_emberd(bin_dir.path()))
        .backend("qemu")
        .data_dir("/nonexistent/data")
        .args(["--pool-size", "0"])
        .env("REMOVED", "set, then removed")
        .env_remove("REMOVED")
        .start()
        .unwrap();
    let log = daemon.log_text();
    let expected = format!(
        "argv: serve --addr {} --work-dir {} --backend qemu --data-dir /nonexistent/data --pool-size 0\n",
        daemon.addr(),
        daemon.work_dir().display()
    );
    assert!(log.contains(&expected), "{log}");
    assert!(log.contains("EMBERD_LOG: info\n"), "{log}");
    assert!(log.contains("REMOVED: None\n"), "{log}");
    assert!(daemon.log_path().starts_with("/tmp"));
    assert_eq!(
        daemon.url("/info"),
        format!("http://{}/info", daemon.addr())
    );

    let pid = daemon.pid();
    let root = daemon.work_dir().parent().unwrap().to_owned();
    drop(daemon);
    assert!(!is_alive(pid));
    assert!(
        !root.exists(),
        "the harness's directory outlived the daemon"
    );
}

#[test]
fn the_environment_given_wins_over_the_default_log_level() {
    let bin_dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::builder(fake_emberd(bin_dir.path()))
        .env("EMBERD_LOG", "warn")
        .start()
        .unwrap();
    assert!(daemon.log_text().contains("EMBERD_LOG: warn\n"));
}

#[test]
fn a_daemon_that_exits_reports_its_status_and_log() {
    let bin_dir = tempfile::tempdir().unwrap();
    let err = Daemon::builder(fake_emberd(bin_dir.path()))
        .env("FAKE_MODE", "exit")
        .start()
        .unwrap_err();
    let HarnessError::Exited { status, log } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(status.code(), Some(3));
    assert!(log.contains("told to exit"), "{log}");
}

#[test]
fn a_daemon_that_never_serves_is_reported_and_killed() {
    let bin_dir = tempfile::tempdir().unwrap();
    let err = Daemon::builder(fake_emberd(bin_dir.path()))
        .env("FAKE_MODE", "mute")
        .ready_within(Duration::from_millis(500))
        .start()
        .unwrap_err();
    assert!(matches!(err, HarnessError::NotServing { .. }), "{err:?}");
    // The stand-in's command line names its script, which lives in `bin_dir`.
    let script = bin_dir.path().display().to_string();
    assert!(
        emberd_harness::processes_mentioning(&script).is_empty(),
        "the daemon outlived the failed start"
    );
}

#[test]
fn vms_are_found_and_killed_with_the_daemon() {
    let bin_dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::builder(fake_emberd(bin_dir.path()))
        .env("FAKE_MODE", "vm")
        .start()
        .unwrap();
    let vms = daemon.vm_processes();
    assert_eq!(vms.len(), 1, "{vms:?}");
    assert_eq!(daemon.children(), vms);
    assert!(daemon.sandbox_dirs().is_empty());
    std::fs::create_dir(daemon.work_dir().join("sb_000000000001")).unwrap();
    assert_eq!(daemon.sandbox_dirs(), ["sb_000000000001"]);
    drop(daemon);
    assert!(!is_alive(vms[0]), "the VM outlived the daemon");
}

#[test]
fn a_signal_ends_the_daemon_with_its_status() {
    let bin_dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::builder(fake_emberd(bin_dir.path()))
        .start()
        .unwrap();
    let status = daemon
        .signal_and_wait(Signal::SIGTERM, Duration::from_secs(10))
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(!is_alive(daemon.pid()));
    assert!(matches!(
        daemon.signal(Signal::SIGTERM),
        Err(HarnessError::AlreadyExited)
    ));
}
