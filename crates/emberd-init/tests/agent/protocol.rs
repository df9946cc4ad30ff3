//! The session itself: the generation handshake, and exec requests the agent
//! must refuse without ceasing to serve.

use emberd_proto::v1::{exec_input, ExecInput, ExecStart, HealthRequest, HelloRequest};
use emberd_proto::PROTOCOL_GENERATION;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::support::{run, sh, Agent};

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
async fn malformed_execs_are_refused_and_the_agent_keeps_serving() {
    let agent = Agent::start();
    let mut client = agent.agent().await;
    // An exec that does not start with `start`, and one with nothing to run.
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

    let out = run(&mut client, sh("echo alive")).await;
    assert_eq!(out.stdout, b"alive\n");
}
