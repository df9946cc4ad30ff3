//! Batch execs (`exec-batch`): the whole request in the start message
//! (stdin and its end included), and the answer held back to go with the
//! exit, so that a short exec is one message each way.

use emberd_proto::boundary::{capability, MAX_BATCH_HELD_BYTES};
use emberd_proto::v1::{exec_input, exec_output, ExecInput, ExecOutput, ExecStart, HelloRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::support::{sh, Agent};

/// Runs `start` with no input after it; every message of the answer.
async fn messages(agent: &Agent, start: ExecStart) -> Vec<ExecOutput> {
    let mut client = agent.agent().await;
    let (tx, rx) = mpsc::channel(1);
    tx.send(ExecInput {
        kind: Some(exec_input::Kind::Start(start)),
    })
    .await
    .unwrap();
    let mut stream = client
        .exec(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut all = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        all.push(message);
    }
    drop(tx);
    all
}

fn batch(script: &str, stdin: &[u8]) -> ExecStart {
    ExecStart {
        stdin: stdin.to_vec(),
        close_stdin: true,
        batch_output: true,
        ..sh(script)
    }
}

#[tokio::test]
async fn the_agent_offers_batch_execs() {
    let agent = Agent::start();
    let hello = agent
        .agent()
        .await
        .hello(HelloRequest {
            generation: emberd_proto::PROTOCOL_GENERATION,
            host_version: "test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(hello
        .capabilities
        .iter()
        .any(|c| c == capability::EXEC_BATCH));
}

#[tokio::test]
async fn a_short_batch_exec_answers_with_one_message() {
    let agent = Agent::start();
    let answer = messages(&agent, batch("tr a-z A-Z; echo oops >&2; exit 4", b"hello")).await;
    assert_eq!(answer.len(), 1, "{answer:?}");
    let Some(exec_output::Kind::Exit(exit)) = &answer[0].kind else {
        panic!("{answer:?}")
    };
    assert_eq!(exit.stdout, b"HELLO");
    assert_eq!(exit.stderr, b"oops\n");
    assert_eq!(exit.exit_code, 4);
    assert!(exit.pid > 0);
    assert!(!exit.warm);
}

#[tokio::test]
async fn batch_output_beyond_the_hold_is_sent_as_it_comes() {
    let agent = Agent::start();
    let size = MAX_BATCH_HELD_BYTES * 3;
    let answer = messages(&agent, batch(&format!("head -c {size} /dev/zero"), b"")).await;
    let mut stdout = 0;
    let mut held = None;
    for message in &answer {
        match &message.kind {
            Some(exec_output::Kind::Stdout(data)) => stdout += data.len(),
            Some(exec_output::Kind::Exit(exit)) => held = Some(exit.stdout.len()),
            other => panic!("no other message in a batch exec: {other:?}"),
        }
    }
    let held = held.expect("an exit");
    assert!(held <= MAX_BATCH_HELD_BYTES, "{held}");
    assert!(stdout > 0);
    assert_eq!(stdout + held, size);
}

#[tokio::test]
async fn start_stdin_comes_before_stdin_messages() {
    let agent = Agent::start();
    let mut client = agent.agent().await;
    let start = ExecStart {
        stdin: b"one ".to_vec(),
        ..sh("cat")
    };
    let (tx, rx) = mpsc::channel(4);
    for kind in [
        exec_input::Kind::Start(start),
        exec_input::Kind::Stdin(b"two".to_vec()),
        exec_input::Kind::CloseStdin(Default::default()),
    ] {
        tx.send(ExecInput { kind: Some(kind) }).await.unwrap();
    }
    let mut stream = client
        .exec(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut stdout = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        match message.kind {
            Some(exec_output::Kind::Stdout(data)) => stdout.extend(data),
            Some(exec_output::Kind::Exit(exit)) => {
                assert_eq!(exit.exit_code, 0);
                break;
            }
            _ => {}
        }
    }
    assert_eq!(stdout, b"one two");
}
