//! The spare node's own life: replaced when it dies, stopped by `Quiesce`,
//! started again by `SetIdentity`.

use std::process::Command;
use std::time::{Duration, Instant};

use emberd_proto::v1::agent_client::AgentClient;
use emberd_proto::v1::{HealthRequest, Identity, QuiesceRequest};
use tonic::transport::Channel;

use crate::support::{
    assert_gone, close_stdin, processes_with, run_started, wait_until_warm, Agent, Language, Start,
};

async fn node_is_warm(client: &mut AgentClient<Channel>) -> bool {
    let health = client.health(HealthRequest {}).await.unwrap().into_inner();
    health.warm_interpreters.contains(&"node".to_owned())
}

/// The command-line word that tells the spare node apart: its script.
fn spare_marker(agent: &Agent) -> String {
    let script = agent.tmp.path().join("emberd-node-spare.js");
    script.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_spare_that_dies_is_not_reported_ready_and_is_replaced() {
    let agent = Agent::start();
    let mut client = agent.agent().await;
    wait_until_warm(&mut client, Language::Node).await;
    let spare = spare_marker(&agent);
    let spares = processes_with(&spare);
    assert_eq!(spares.len(), 1, "{spares:?}");
    let killed = Command::new("kill")
        .args(["-KILL", &spares[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while node_is_warm(&mut client).await {
        assert!(
            Instant::now() < deadline,
            "a dead spare is still reported ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The next exec runs on a fresh node, and a new spare follows it.
    let exec = Language::Node.exec(Start::Warm, "console.log('fresh')");
    let out = run_started(
        &mut client,
        Language::Node,
        Start::Cold,
        exec,
        vec![close_stdin()],
    )
    .await;
    assert_eq!(out.stdout, b"fresh\n");
    wait_until_warm(&mut client, Language::Node).await;
}

#[tokio::test]
async fn quiesce_stops_the_spare_and_a_new_identity_starts_one() {
    let agent = Agent::start();
    let mut client = agent.agent().await;
    wait_until_warm(&mut client, Language::Node).await;
    client.quiesce(QuiesceRequest {}).await.unwrap();
    assert!(!node_is_warm(&mut client).await);
    assert_gone(&spare_marker(&agent)).await;
    client
        .set_identity(Identity {
            sandbox_id: "sb_000000000001".into(),
            ..Identity::default()
        })
        .await
        .unwrap();
    wait_until_warm(&mut client, Language::Node).await;
}
