//! Execs on a pseudo-terminal: a tty of the asked size, resizes, stdin and
//! end of input through the terminal, never the warm interpreters, and the
//! process group still killed on timeout.

use std::time::Duration;

use emberd_proto::v1::{exec_input, exec_output, ExecInput, ExecStart, PtySize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::support::{
    assert_gone, close_stdin, marker, run_started, run_with, sh, wait_until_warm, Agent, Language,
    Start,
};

fn on_pty(mut start: ExecStart, rows: u32, cols: u32) -> ExecStart {
    start.pty = Some(PtySize { rows, cols });
    // A failure ends the test instead of hanging it.
    start.timeout_ms = 20_000;
    start
}

/// An exec driven step by step: the test sends input as it sees output.
struct Live {
    input: mpsc::Sender<ExecInput>,
    output: Streaming<emberd_proto::v1::ExecOutput>,
    seen: Vec<u8>,
}

impl Live {
    async fn start(agent: &Agent, start: ExecStart) -> Live {
        let mut client = agent.agent().await;
        let (input, rx) = mpsc::channel(16);
        input
            .send(ExecInput {
                kind: Some(exec_input::Kind::Start(start)),
            })
            .await
            .unwrap();
        let output = client
            .exec(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Live {
            input,
            output,
            seen: Vec::new(),
        }
    }

    async fn send(&self, kind: exec_input::Kind) {
        self.input
            .send(ExecInput { kind: Some(kind) })
            .await
            .unwrap();
    }

    /// Reads output until it contains `text` (counting from what was seen so far).
    async fn wait_for(&mut self, text: &str) {
        while !String::from_utf8_lossy(&self.seen).contains(text) {
            match self.output.message().await.unwrap().unwrap().kind.unwrap() {
                exec_output::Kind::Stdout(data) => self.seen.extend(data),
                exec_output::Kind::Started(_) => {}
                other => panic!(
                    "waiting for {text:?}, got {other:?} after {:?}",
                    String::from_utf8_lossy(&self.seen)
                ),
            }
        }
    }

    /// Reads to the exit message; returns its exit code.
    async fn finish(&mut self) -> i32 {
        while let Some(message) = self.output.message().await.unwrap() {
            match message.kind.unwrap() {
                exec_output::Kind::Stdout(data) => self.seen.extend(data),
                exec_output::Kind::Stderr(data) => panic!("stderr on a terminal: {data:?}"),
                exec_output::Kind::Started(_) => {}
                exec_output::Kind::Exit(exit) => {
                    assert!(!exit.timed_out, "{exit:?}");
                    return exit.exit_code;
                }
            }
        }
        panic!("no exit message");
    }
}

#[tokio::test]
async fn a_pty_exec_sees_a_terminal_of_the_asked_size_and_its_resizes() {
    let agent = Agent::start();
    let script = "test -t 0 && test -t 1 && test -t 2 && echo TTY; \
                  echo \"size $(stty size)\"; read line; echo \"size $(stty size)\"";
    let mut live = Live::start(&agent, on_pty(sh(script), 30, 100)).await;
    live.wait_for("size 30 100").await;
    live.send(exec_input::Kind::Resize(PtySize {
        rows: 40,
        cols: 120,
    }))
    .await;
    live.send(exec_input::Kind::Stdin(b"\n".to_vec())).await;
    live.wait_for("size 40 120").await;
    assert_eq!(live.finish().await, 0);
    let seen = String::from_utf8_lossy(&live.seen);
    assert!(seen.contains("TTY"), "{seen:?}");
}

#[tokio::test]
async fn a_zero_size_is_24_by_80_and_stderr_comes_back_on_stdout() {
    let agent = Agent::start();
    let mut client = agent.agent().await;
    let out = run_with(
        &mut client,
        on_pty(sh("stty size; echo oops >&2; echo $TERM"), 0, 0),
        vec![],
    )
    .await;
    assert_eq!(out.exit.exit_code, 0, "{out:?}");
    assert!(out.stderr.is_empty());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("24 80\r\n"), "{text:?}");
    assert!(text.contains("oops\r\n"), "{text:?}");
    assert!(text.contains("xterm"), "{text:?}");
}

#[tokio::test]
async fn pty_stdin_reaches_the_program_and_close_stdin_is_end_of_file() {
    let agent = Agent::start();
    let mut live = Live::start(&agent, on_pty(sh("tr a-z A-Z"), 24, 80)).await;
    live.send(exec_input::Kind::Stdin(b"hello\n".to_vec()))
        .await;
    live.wait_for("HELLO").await;
    live.send(close_stdin()).await;
    assert_eq!(live.finish().await, 0);

    // `cat` reading from the terminal ends on the end-of-file character.
    let mut client = agent.agent().await;
    let out = run_with(
        &mut client,
        on_pty(
            ExecStart {
                argv: vec!["cat".into()],
                ..ExecStart::default()
            },
            24,
            80,
        ),
        vec![exec_input::Kind::Stdin(b"line\n".to_vec()), close_stdin()],
    )
    .await;
    assert!(!out.exit.timed_out, "{out:?}");
    assert_eq!(out.exit.exit_code, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("line\r\n"));
}

#[tokio::test]
async fn a_pty_exec_never_runs_on_the_warm_interpreter() {
    let agent = Agent::start();
    let mut client = agent.agent().await;
    wait_until_warm(&mut client, Language::Python).await;
    let exec = on_pty(
        Language::Python.exec(Start::Warm, "import sys; print(sys.stdin.isatty())"),
        24,
        80,
    );
    let out = run_started(&mut client, Language::Python, Start::Cold, exec, vec![]).await;
    assert_eq!(out.exit.exit_code, 0, "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "True\r\n");
}

#[tokio::test]
async fn a_pty_exec_timeout_kills_its_process_group() {
    let agent = Agent::start();
    let mut client = agent.agent().await;
    let marker = marker(40);
    let mut start = on_pty(sh(&format!("sleep {marker} & sleep {marker}")), 24, 80);
    start.timeout_ms = Duration::from_millis(500).as_millis() as u64;
    let out = run_with(&mut client, start, vec![]).await;
    assert!(out.exit.timed_out, "{out:?}");
    assert_eq!(out.exit.signal, 9);
    assert_gone(&marker).await;
}
