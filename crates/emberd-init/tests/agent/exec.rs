//! Execs of plain commands: output, stdin, exit codes, signals, timeouts,
//! caps, concurrency, and what happens to processes when an exec ends.

use std::time::{Duration, Instant};

use emberd_proto::v1::{exec_input, exec_output, ExecInput, ExecStart};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::support::{
    assert_gone, close_stdin, marker, processes_with, run, run_with, sh, Agent, Language, Start,
    GONE_BOUND,
};

/// An upper bound on how long an exec may go on once its process group is
/// dead. The agent's reader waits out a pipe kept open by an escaped process
/// for at most 10 s (its drain limit): half of that still tells a prompt end
/// from one that waited for the limit, with room for a loaded machine.
const PROMPT_END: Duration = Duration::from_secs(5);

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
            close_stdin(),
        ],
    )
    .await;
    assert_eq!(out.stdout, b"HELLO WORLD");
    assert_eq!(out.exit.exit_code, 0);
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group_and_keeps_output() {
    let agent = Agent::start();
    let mut client = agent.agent().await;
    let marker = marker(1);
    let mut start = sh(&format!("echo before; sleep {marker} & sleep {marker}"));
    // Long enough for the shell to print on a loaded machine.
    let timeout = Duration::from_secs(1);
    start.timeout_ms = timeout.as_millis() as u64;
    let started = Instant::now();
    let out = run(&mut client, start).await;
    let elapsed = started.elapsed();
    assert!(out.exit.timed_out, "{out:?}");
    assert_eq!(out.exit.signal, 9);
    assert_eq!(out.exit.exit_code, 128 + 9);
    assert_eq!(out.stdout, b"before\n");
    // The background sleep held stdout too: it went with the group.
    assert!(elapsed < timeout + PROMPT_END, "took {elapsed:?}");
    // Nothing of that exec survives, not even the background sleep.
    assert_gone(&marker).await;
}

#[tokio::test]
async fn a_process_escaping_the_group_does_not_hold_the_exec_open() {
    let agent = Agent::start();
    let mut client = agent.agent().await;
    let marker = marker(2);
    let started = Instant::now();
    // The escaped sleep keeps the stdout pipe open after the group is gone.
    let out = run(
        &mut client,
        sh(&format!("echo hi; setsid sleep {marker} & sleep 0.2")),
    )
    .await;
    let elapsed = started.elapsed();
    // The exec has ended while the escaped process still runs.
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
    assert!(elapsed < PROMPT_END, "took {elapsed:?}");
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
    let mut start = Language::Python.exec(Start::Cold, "print('never')");
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

#[tokio::test]
async fn a_dropped_connection_kills_its_execs_and_the_agent_takes_the_next() {
    let agent = Agent::start();
    let marker = marker(3);
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
        // `sh -c 'exec sleep …'` shows the marker from its exec on; on a
        // loaded machine /proc may lag the Started message a little.
        let deadline = Instant::now() + GONE_BOUND;
        while processes_with(&marker).len() != 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(processes_with(&marker).len(), 1);
        drop(stream);
        drop(tx);
    }
    assert_gone(&marker).await;
    let mut client = agent.agent().await;
    assert_eq!(run(&mut client, sh("echo next")).await.stdout, b"next\n");
}

#[tokio::test]
async fn the_exec_drain_limit_bounds_how_long_an_escaped_writer_holds_it() {
    let agent = Agent::start();
    let mut client = agent.agent().await;
    let marker = marker(4);
    // The escaped writer never lets the pipe go idle: only the drain limit
    // (here 1 s, against a default of 10 s) ends the exec.
    let mut start = sh(&format!(
        "setsid sh -c 'while :; do echo tick || exit; sleep 0.05; done; sleep {marker}' & sleep 0.2"
    ));
    start.drain_limit_ms = 1000;
    let started = Instant::now();
    let out = run(&mut client, start).await;
    let elapsed = started.elapsed();
    for pid in processes_with(&marker) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(out.stdout.starts_with(b"tick\n"), "{out:?}");
    assert_eq!(out.exit.exit_code, 0, "{out:?}");
    assert!(elapsed < PROMPT_END, "took {elapsed:?}");
}

#[tokio::test]
async fn what_an_exec_leaves_in_its_group_goes_when_it_ends() {
    let agent = Agent::start();
    let mut client = agent.agent().await;
    let first = marker(5);
    let second = marker(6);
    // The leader exits at once; the background sleep holds no pipe, so
    // only the kill at the leader's end takes it.
    let out = run(
        &mut client,
        sh(&format!(
            "sleep {first} >/dev/null 2>&1 </dev/null & echo left"
        )),
    )
    .await;
    assert_eq!(out.stdout, b"left\n");
    assert_gone(&first).await;

    // The same for a child of the pre-started Python, reaped by the fork server.
    let code = format!(
        "import subprocess\nsubprocess.Popen(['sleep', '{second}'], stdin=subprocess.DEVNULL, \
         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\nprint('left')"
    );
    let out = crate::support::run_code(&mut client, Language::Python, Start::Warm, &code).await;
    assert_eq!(out.stdout, b"left\n", "{out:?}");
    assert_gone(&second).await;
}
