//! The agent as a host process on a Unix socket: exec, files and protocol
//! semantics without a VM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use emberd_proto::v1::agent_client::AgentClient;
use emberd_proto::v1::files_client::FilesClient;
use emberd_proto::v1::{
    exec_input, exec_output, write_file_request, ExecExit, ExecInput, ExecStart, HealthRequest,
    HelloRequest, Identity, MakeDirRequest, PathRequest, QuiesceRequest, ReadFileRequest,
    RemoveRequest, WriteFileRequest, WriteFileStart,
};
use emberd_proto::PROTOCOL_GENERATION;
use sha2::{Digest, Sha256};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// A running agent, killed on drop.
struct Agent {
    child: Child,
    socket: PathBuf,
    root: tempfile::TempDir,
    tmp: tempfile::TempDir,
}

impl Agent {
    fn start() -> Agent {
        let root = tempfile::tempdir().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let socket = tmp.path().join("agent.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_emberd-init"))
            .arg("--unix-socket")
            .arg(&socket)
            .arg("--root")
            .arg(root.path())
            .arg("--tmp-dir")
            .arg(tmp.path())
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "agent did not listen");
            std::thread::sleep(Duration::from_millis(5));
        }
        Agent {
            child,
            socket,
            root,
            tmp,
        }
    }

    async fn channel(&self) -> Channel {
        let stream = UnixStream::connect(&self.socket).await.unwrap();
        emberd_proto::channel_over(stream).await.unwrap()
    }

    async fn agent(&self) -> AgentClient<Channel> {
        AgentClient::new(self.channel().await)
    }

    async fn files(&self) -> FilesClient<Channel> {
        FilesClient::new(self.channel().await)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Default)]
struct Outcome {
    warm: bool,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit: ExecExit,
}

fn sh(script: &str) -> ExecStart {
    ExecStart {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..ExecStart::default()
    }
}

fn python(code: &str) -> ExecStart {
    ExecStart {
        interpreter: vec!["python3".into(), "-u".into()],
        code: code.as_bytes().to_vec(),
        file_suffix: ".py".into(),
        ..ExecStart::default()
    }
}

fn warm_python(code: &str) -> ExecStart {
    ExecStart {
        warm_language: "python".into(),
        ..python(code)
    }
}

fn node(code: &str) -> ExecStart {
    ExecStart {
        interpreter: vec!["node".into()],
        code: code.as_bytes().to_vec(),
        file_suffix: ".js".into(),
        ..ExecStart::default()
    }
}

fn warm_node(code: &str) -> ExecStart {
    ExecStart {
        warm_language: "node".into(),
        ..node(code)
    }
}

/// Waits until `Health` lists `language` among the warm interpreters.
async fn wait_until_warm(client: &mut AgentClient<Channel>, language: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let health = client.health(HealthRequest {}).await.unwrap().into_inner();
        if health.warm_interpreters.iter().any(|w| w == language) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the warm {language} never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `start` on a ready spare node (waiting for one) and checks that the
/// spare, not a fresh node, ran it.
async fn on_spare_with(
    client: &mut AgentClient<Channel>,
    start: ExecStart,
    inputs: Vec<exec_input::Kind>,
) -> Outcome {
    wait_until_warm(client, "node").await;
    let out = run_with(client, start, inputs).await;
    assert!(out.warm, "not run by the spare node: {out:?}");
    out
}

async fn on_spare(client: &mut AgentClient<Channel>, code: &str) -> Outcome {
    on_spare_with(
        client,
        warm_node(code),
        vec![exec_input::Kind::CloseStdin(Default::default())],
    )
    .await
}

/// Runs one exec, sending `inputs` after the start message.
async fn run_with(
    client: &mut AgentClient<Channel>,
    start: ExecStart,
    inputs: Vec<exec_input::Kind>,
) -> Outcome {
    let (tx, rx) = mpsc::channel(16);
    tx.send(ExecInput {
        kind: Some(exec_input::Kind::Start(start)),
    })
    .await
    .unwrap();
    let feeder = tokio::spawn(async move {
        for kind in inputs {
            tx.send(ExecInput { kind: Some(kind) }).await.unwrap();
        }
        tx.closed().await;
    });
    let mut stream = client
        .exec(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut outcome = Outcome::default();
    while let Some(message) = stream.message().await.unwrap() {
        match message.kind.unwrap() {
            exec_output::Kind::Started(started) => outcome.warm = started.warm,
            exec_output::Kind::Stdout(data) => outcome.stdout.extend(data),
            exec_output::Kind::Stderr(data) => outcome.stderr.extend(data),
            exec_output::Kind::Exit(exit) => {
                outcome.exit = exit;
                feeder.abort();
                return outcome;
            }
        }
    }
    panic!("exec stream ended without an exit message");
}

async fn run(client: &mut AgentClient<Channel>, start: ExecStart) -> Outcome {
    run_with(
        client,
        start,
        vec![exec_input::Kind::CloseStdin(Default::default())],
    )
    .await
}

/// Waits up to `bound` until no live process has `marker` in its command
/// line; fails the test if one is still there.
async fn assert_gone_within(marker: &str, bound: Duration) {
    let deadline = Instant::now() + bound;
    while !processes_with(marker).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = processes_with(marker);
    assert!(left.is_empty(), "still running with {marker:?}: {left:?}");
}

#[tokio::test]
async fn hello_checks_the_generation() {
    let agent = Agent::start();
    let mut client = agent.agent().await;
    let reply = client
        .hello(HelloRequest {
            generation: PROTOCOL_GENERATION,
            host_version: "test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.generation, PROTOCOL_GENERATION);
    assert!(reply.capabilities.contains(&"exec".to_owned()));
    let refused = client
        .hello(HelloRequest {
            generation: PROTOCOL_GENERATION + 7,
            host_version: "future".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("generation"),
        "{}",
        refused.message()
    );
    assert!(
        client
            .health(HealthRequest {})
            .await
            .unwrap()
            .into_inner()
            .ok
    );
}

#[tokio::test]
async fn stdout_and_stderr_are_kept_apart_and_exit_codes_reported() {
    let agent = Agent::start();
    let mut client = agent.agent().await;
    let out = run(&mut client, sh("echo out; echo err >&2; exit 3")).await;
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.exit.exit_code, 3);
    assert!(!out.exit.timed_out);
    assert!(out.exit.duration_us > 0);

    let out = run(&mut client, python("import sys\nprint('hi')\nsys.exit(42)")).await;
    assert_eq!(
        (out.stdout.as_slice(), out.exit.exit_code),
        (&b"hi\n"[..], 42)
    );

    let out = run(&mut client, python("print('unclosed'")).await;
    assert_eq!(out.exit.exit_code, 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SyntaxError"),
        "{out:?}"
    );
}

#[tokio::test]
async fn stdin_is_piped() {
    let agent = Agent::start();
    let mut client = agent.agent().await;
    let out = run_with(
        &mut client,
        sh("tr a-z A-Z"),
        vec![
            exec_input::Kind::Stdin(b"hello ".to_vec()),
            exec_input::Kind::Stdin(b"world".to_vec()),
            exec_input::Kind::CloseStdin(Default::default()),
        ],
    )
    .await;
    assert_eq!(out.stdout, b"HELLO WORLD");
    assert_eq!(out.exit.exit_code, 0);
}

/// Live processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'));
            !zombie && String::from_utf8_lossy(&cmdline).contains(marker)
        })
        .collect()
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group_and_keeps_output() {
    let agent = Agent::start();
    let mut client = agent.agent().await;
    let marker = format!("1000.{}", std::process::id());
    let mut start = sh(&format!("echo before; sleep {marker} & sleep {marker}"));
    start.timeout_ms = 500;
    let started = Instant::now();
    let out = run(&mut client, start).await;
    let elapsed = started.elapsed();
    assert!(out.exit.timed_out, "{out:?}");
    assert_eq!(out.exit.signal, 9);
    assert_eq!(out.exit.exit_code, 128 + 9);
    assert_eq!(out.stdout, b"before\n");
    assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");
    // Nothing of that exec survives, not even the background sleep.
    assert_gone_within(&marker, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_process_escaping_the_group_does_not_hold_the_exec_open() {
    let agent = Agent::start();
    let mut client = agent.agent().await;
    let marker = format!("1000.{}", std::process::id() + 3);
    let started = Instant::now();
    // The escaped sleep keeps the stdout pipe open after the group is gone.
    let out = run(
        &mut client,
        sh(&format!("echo hi; setsid sleep {marker} & sleep 0.2")),
    )
    .await;
    let elapsed = started.elapsed();
    let escaped = processes_with(&marker);
    for pid in &escaped {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert_eq!(escaped.len(), 1, "the escaped process did not run");
    assert_eq!(
        (out.stdout.as_slice(), out.exit.exit_code),
        (&b"hi\n"[..], 0)
    );
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
}

#[tokio::test]
async fn signals_and_launch_failures_are_reported() {
    let agent = Agent::start();
    let mut client = agent.agent().await;
    let out = run_with(
        &mut client,
        sh("echo ready; sleep 30"),
        vec![exec_input::Kind::Signal(15)],
    )
    .await;
    assert_eq!(out.exit.signal, 15, "{out:?}");
    assert_eq!(out.exit.exit_code, 128 + 15);

    let out = run(
        &mut client,
        ExecStart {
            argv: vec!["/nonexistent/interpreter".into()],
            ..ExecStart::default()
        },
    )
    .await;
    assert_eq!(out.exit.exit_code, -1);
    assert!(out.exit.error.contains("failed to start"), "{out:?}");

    // A missing cwd fails the launch and leaves no code file behind.
    let mut start = python("print('never')");
    start.cwd = "/does/not/exist".into();
    let out = run(&mut client, start).await;
    assert_eq!(out.exit.exit_code, -1);
    assert!(out.exit.error.contains("failed to start"), "{out:?}");
    let mut start = sh("pwd");
    start.cwd = "/../..".into();
    let out = run(&mut client, start).await;
    assert_eq!(out.exit.exit_code, -1);
    assert!(out.exit.error.contains("cwd"), "{out:?}");
    let code_files: Vec<_> = std::fs::read_dir(agent.tmp.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("emberd-exec-"))
        .collect();
    assert!(code_files.is_empty(), "{code_files:?}");

    // A cwd under the root works.
    std::fs::create_dir(agent.root.path().join("work")).unwrap();
    let mut start = sh("pwd");
    start.cwd = "/work".into();
    let out = run(&mut client, start).await;
    let expected = format!("{}\n", agent.root.path().join("work").display());
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
}

#[tokio::test]
async fn output_over_the_cap_is_cut_and_flagged() {
    let agent = Agent::start();
    let mut client = agent.agent().await;
    let mut start = sh("head -c 1000000 /dev/zero; echo done >&2");
    start.output_limit_bytes = 1000;
    let out = run(&mut client, start).await;
    assert_eq!(out.stdout.len(), 1000);
    assert!(out.exit.stdout_truncated);
    assert!(!out.exit.stderr_truncated);
    assert_eq!(out.stderr, b"done\n");
    assert_eq!(out.exit.exit_code, 0);
}

#[tokio::test]
async fn non_utf8_output_survives_byte_for_byte() {
    let agent = Agent::start();
    let mut client = agent.agent().await;
    let out = run(&mut client, sh(r"printf '\377\376\000\200abc'")).await;
    assert_eq!(out.stdout, b"\xff\xfe\x00\x80abc");
}

#[tokio::test]
async fn a_hundred_concurrent_execs() {
    let agent = Agent::start();
    let client = agent.agent().await;
    let runs = (0..100).map(|i| {
        let mut client = client.clone();
        async move {
            (
                i,
                run(
                    &mut client,
                    sh(&format!("echo {i}; echo e{i} >&2; exit {}", i % 7)),
                )
                .await,
            )
        }
    });
    for (i, out) in futures::future::join_all(runs).await {
        assert_eq!(out.stdout, format!("{i}\n").into_bytes());
        assert_eq!(out.stderr, format!("e{i}\n").into_bytes());
        assert_eq!(out.exit.exit_code, i % 7);
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_100_mib_file_streams_both_ways_in_bounded_memory() {
    let agent = Agent::start();
    let mut files = agent.files().await;
    const SIZE: usize = 100 * 1024 * 1024;
    const CHUNK: usize = 256 * 1024;
    let (tx, rx) = mpsc::channel(4);
    let writer = tokio::spawn(async move {
        let mut hash = Sha256::new();
        tx.send(WriteFileRequest {
            kind: Some(write_file_request::Kind::Start(WriteFileStart {
                path: "/data/big.bin".into(),
                mode: 0o600,
                make_parents: true,
            })),
        })
        .await
        .unwrap();
        let mut sent = 0usize;
        let mut counter = 0u8;
        while sent < SIZE {
            let chunk: Vec<u8> = (0..CHUNK)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(counter))
                .collect();
            counter = counter.wrapping_add(1);
            hash.update(&chunk);
            sent += chunk.len();
            tx.send(WriteFileRequest {
                kind: Some(write_file_request::Kind::Data(chunk)),
            })
            .await
            .unwrap();
        }
        hash.finalize().to_vec()
    });
    let written = files
        .write_file(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let expected = writer.await.unwrap();
    assert_eq!(written.bytes_written, SIZE as u64);
    let on_disk = agent.root.path().join("data/big.bin");
    assert_eq!(std::fs::metadata(&on_disk).unwrap().len(), SIZE as u64);
    // No temporary file is left beside it.
    assert_eq!(
        std::fs::read_dir(agent.root.path().join("data"))
            .unwrap()
            .count(),
        1
    );

    let mut stream = files
        .read_file(ReadFileRequest {
            path: "/data/big.bin".into(),
            offset: 0,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut hash = Sha256::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.message().await.unwrap() {
        total += chunk.data.len();
        hash.update(&chunk.data);
    }
    assert_eq!(total, SIZE);
    assert_eq!(hash.finalize().to_vec(), expected);
    let peak = rss_kib(agent.pid(), "VmHWM:");
    assert!(
        peak < 40 * 1024,
        "agent peak RSS {peak} KiB for a 100 MiB file"
    );
}

#[tokio::test]
async fn hostile_paths_and_bad_requests_get_errors_and_the_agent_keeps_serving() {
    let agent = Agent::start();
    let mut files = agent.files().await;
    for path in [
        "../../etc/passwd",
        "relative/path",
        "/a/../../etc/passwd",
        "/nul\0byte",
        "",
    ] {
        let err = files
            .stat(PathRequest { path: path.into() })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{path:?}: {err:?}"
        );
    }
    let err = files
        .read_file(ReadFileRequest {
            path: "/../../../etc/shadow".into(),
            ..ReadFileRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = files
        .stat(PathRequest {
            path: "/missing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = files
        .remove(RemoveRequest {
            path: "/".into(),
            recursive: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // A write whose first message is not `start`.
    let (tx, rx) = mpsc::channel(2);
    tx.send(WriteFileRequest {
        kind: Some(write_file_request::Kind::Data(b"x".to_vec())),
    })
    .await
    .unwrap();
    drop(tx);
    let err = files.write_file(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // An exec that does not start with `start`, and one with nothing to run.
    let mut client = agent.agent().await;
    let (tx, rx) = mpsc::channel(2);
    tx.send(ExecInput {
        kind: Some(exec_input::Kind::Stdin(b"x".to_vec())),
    })
    .await
    .unwrap();
    let err = client.exec(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    drop(tx);
    let (tx, rx) = mpsc::channel(2);
    tx.send(ExecInput {
        kind: Some(exec_input::Kind::Start(ExecStart::default())),
    })
    .await
    .unwrap();
    let err = client.exec(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    drop(tx);

    // Still serving: directories, listing, exec.
    files
        .make_dir(MakeDirRequest {
            path: "/work/a/b".into(),
            parents: true,
            mode: 0,
        })
        .await
        .unwrap();
    let listing = files
        .list_dir(PathRequest {
            path: "/work".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listing.entries.len(), 1);
    assert_eq!(listing.entries[0].name, "a");
    files
        .remove(RemoveRequest {
            path: "/work".into(),
            recursive: true,
        })
        .await
        .unwrap();
    assert!(!Path::new(&agent.root.path().join("work")).exists());
    let out = run(&mut client, sh("echo alive")).await;
    assert_eq!(out.stdout, b"alive\n");
}

#[tokio::test]
async fn a_dropped_connection_kills_its_execs_and_the_agent_takes_the_next() {
    let agent = Agent::start();
    let marker = format!("999.{}", std::process::id() + 1);
    {
        let mut client = agent.agent().await;
        let (tx, rx) = mpsc::channel(2);
        tx.send(ExecInput {
            kind: Some(exec_input::Kind::Start(sh(&format!("exec sleep {marker}")))),
        })
        .await
        .unwrap();
        let mut stream = client
            .exec(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert!(matches!(first.kind, Some(exec_output::Kind::Started(_))));
        assert_eq!(processes_with(&marker).len(), 1);
        drop(stream);
        drop(tx);
    }
    // Yield to the runtime so the dropped connection really closes.
    assert_gone_within(&marker, Duration::from_secs(5)).await;
    let mut client = agent.agent().await;
    assert_eq!(run(&mut client, sh("echo next")).await.stdout, b"next\n");
}

#[tokio::test]
async fn the_warm_python_behaves_like_a_fresh_interpreter() {
    let agent = Agent::start();
    let mut client = agent.agent().await;
    // The fork server comes up in the background.
    wait_until_warm(&mut client, "python").await;

    let out = run(
        &mut client,
        warm_python("import sys\nprint(6*7)\nprint('e', file=sys.stderr)"),
    )
    .await;
    assert!(out.warm, "not forked from the warm interpreter");
    assert_eq!(
        (
            out.stdout.as_slice(),
            out.stderr.as_slice(),
            out.exit.exit_code
        ),
        (&b"42\n"[..], &b"e\n"[..], 0)
    );

    let out = run(&mut client, warm_python("import sys\nsys.exit(42)")).await;
    assert_eq!(out.exit.exit_code, 42);
    let out = run(&mut client, warm_python("exit(7)")).await;
    assert_eq!(out.exit.exit_code, 7);

    let out = run(&mut client, warm_python("print('unclosed'")).await;
    assert_eq!(out.exit.exit_code, 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SyntaxError"),
        "{out:?}"
    );

    let out = run(
        &mut client,
        warm_python("def f():\n    raise ValueError('boom')\nf()"),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.exit.exit_code, 1);
    assert!(
        stderr.starts_with("Traceback (most recent call last):"),
        "{stderr}"
    );
    assert!(
        stderr.contains("ValueError: boom") && !stderr.contains("forkserver"),
        "{stderr}"
    );

    // stdin, __name__, argv, and no memory shared between execs.
    let out = run_with(
        &mut client,
        warm_python("import sys\nprint(__name__, sys.argv[0].endswith('.py'), sys.stdin.read())\nglobal_marker = 1"),
        vec![exec_input::Kind::Stdin(b"in".to_vec()), exec_input::Kind::CloseStdin(Default::default())],
    )
    .await;
    assert_eq!(out.stdout, b"__main__ True in\n");
    let out = run(
        &mut client,
        warm_python("print('global_marker' in globals())"),
    )
    .await;
    assert_eq!(out.stdout, b"False\n");

    // Fresh random state per exec.
    let a = run(
        &mut client,
        warm_python("import random; print(random.getrandbits(64))"),
    )
    .await;
    let b = run(
        &mut client,
        warm_python("import random; print(random.getrandbits(64))"),
    )
    .await;
    assert_ne!(a.stdout, b.stdout);

    // A timeout kills the child and what it started.
    let marker = format!("1000.{}", std::process::id() + 7);
    let mut start = warm_python(&format!(
        "import subprocess, time\nprint('before', flush=True)\nsubprocess.Popen(['sleep', '{marker}'])\ntime.sleep(100)"
    ));
    start.timeout_ms = 700;
    let out = run(&mut client, start).await;
    assert!(out.exit.timed_out);
    assert_eq!(out.stdout, b"before\n");
    assert_gone_within(&marker, Duration::from_secs(2)).await;

    // Signals reach it.
    let out = run_with(
        &mut client,
        warm_python("import time\nprint('ready', flush=True)\ntime.sleep(30)"),
        vec![exec_input::Kind::Signal(15)],
    )
    .await;
    assert_eq!(out.exit.signal, 15, "{out:?}");
}

#[tokio::test]
async fn the_warm_node_behaves_like_a_fresh_interpreter() {
    let agent = Agent::start();
    let mut client = agent.agent().await;
    let out = on_spare(&mut client, "console.log(6*7); console.error('e')").await;
    assert_eq!(
        (
            out.stdout.as_slice(),
            out.stderr.as_slice(),
            out.exit.exit_code
        ),
        (&b"42\n"[..], &b"e\n"[..], 0)
    );

    let out = on_spare(&mut client, "process.exit(42)").await;
    assert_eq!(out.exit.exit_code, 42);
    let out = on_spare(&mut client, "process.exitCode = 7").await;
    assert_eq!(out.exit.exit_code, 7);
    let out = on_spare(&mut client, "console.log('unclosed'").await;
    assert_eq!(out.exit.exit_code, 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SyntaxError"),
        "{out:?}"
    );
    let out = on_spare(&mut client, "function f() { throw new Error('boom') }\nf()").await;
    assert_eq!(out.exit.exit_code, 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Error: boom"),
        "{out:?}"
    );
    // Asynchronous work runs to its end before the process exits.
    let out = on_spare(
        &mut client,
        "setTimeout(() => console.log('later'), 50); console.log('now')",
    )
    .await;
    assert_eq!(out.stdout, b"now\nlater\n");

    // stdin, the main module, argv, cwd and environment, and no memory shared
    // between execs.
    let mut start = warm_node(
        "let input = '';\n\
         process.stdin.on('data', d => input += d);\n\
         process.stdin.on('end', () => console.log(require.main === module, \
           process.argv[1].endsWith('.js'), process.cwd(), process.env.GREETING, \
           process.env.PATH !== undefined, input));\n\
         globalThis.marker = 1",
    );
    start.env.insert("GREETING".into(), "hi".into());
    std::fs::create_dir(agent.root.path().join("work")).unwrap();
    start.cwd = "/work".into();
    let out = on_spare_with(
        &mut client,
        start,
        vec![
            exec_input::Kind::Stdin(b"in".to_vec()),
            exec_input::Kind::CloseStdin(Default::default()),
        ],
    )
    .await;
    let work = agent.root.path().join("work").canonicalize().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("true true {} hi true in\n", work.display())
    );
    let out = on_spare(&mut client, "console.log('marker' in globalThis)").await;
    assert_eq!(out.stdout, b"false\n");

    // Fresh random state per exec.
    let a = on_spare(&mut client, "console.log(Math.random())").await;
    let b = on_spare(&mut client, "console.log(Math.random())").await;
    assert_ne!(a.stdout, b.stdout);

    // A variable that shapes Node's start-up gets a fresh node.
    let mut start = warm_node("console.log(process.env.NODE_OPTIONS)");
    start
        .env
        .insert("NODE_OPTIONS".into(), "--no-warnings".into());
    let out = run(&mut client, start).await;
    assert!(!out.warm);
    assert_eq!(out.stdout, b"--no-warnings\n");

    // A timeout kills the process and what it started.
    let marker = format!("1000.{}", std::process::id() + 11);
    let mut start = warm_node(&format!(
        "require('child_process').spawn('sleep', ['{marker}'], {{stdio: 'ignore'}});\n\
         console.log('before'); setInterval(() => {{}}, 1000)"
    ));
    start.timeout_ms = 1500;
    let out = on_spare_with(&mut client, start, Vec::new()).await;
    assert!(out.exit.timed_out, "{out:?}");
    assert_eq!(out.stdout, b"before\n");
    assert_gone_within(&marker, Duration::from_secs(2)).await;

    // Signals reach it.
    let out = on_spare_with(
        &mut client,
        warm_node("console.log('ready'); setInterval(() => {}, 1000)"),
        vec![exec_input::Kind::Signal(15)],
    )
    .await;
    assert_eq!(out.exit.signal, 15, "{out:?}");

    // A spare that dies while it waits is no longer reported ready; the next
    // exec runs on a fresh node, and a new spare follows it.
    wait_until_warm(&mut client, "node").await;
    let spare = agent.tmp.path().join("emberd-node-spare.js");
    let spare = spare.to_str().unwrap();
    let spares = processes_with(spare);
    assert_eq!(spares.len(), 1, "{spares:?}");
    let killed = Command::new("kill")
        .args(["-KILL", &spares[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let health = client.health(HealthRequest {}).await.unwrap().into_inner();
        if !health.warm_interpreters.contains(&"node".to_owned()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a dead spare is still reported ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = run(&mut client, warm_node("console.log('fresh')")).await;
    assert_eq!((out.stdout.as_slice(), out.warm), (&b"fresh\n"[..], false));
    wait_until_warm(&mut client, "node").await;

    // Quiesce stops the spare; a new identity starts one again.
    client.quiesce(QuiesceRequest {}).await.unwrap();
    let health = client.health(HealthRequest {}).await.unwrap().into_inner();
    assert!(!health.warm_interpreters.contains(&"node".to_owned()));
    assert_gone_within(spare, Duration::from_secs(2)).await;
    client
        .set_identity(Identity {
            sandbox_id: "sb_000000000001".into(),
            ..Identity::default()
        })
        .await
        .unwrap();
    wait_until_warm(&mut client, "node").await;
}
