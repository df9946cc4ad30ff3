//! The scripted stand-in of the guest agent: the `Agent` service of
//! `emberd_proto::v1`, answering as `emberd-init` does (generation check,
//! health, identity, quiesce, streamed exec) with execs run by
//! [`script`](super::script) instead of processes.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use emberd_proto::boundary::capability;
use emberd_proto::v1::agent_server::Agent;
use emberd_proto::v1::{
    exec_input, ExecInput, ExecOutput, HealthRequest, HealthResponse, HelloRequest, HelloResponse,
    Identity, QuiesceRequest, QuiesceResponse, SetIdentityResponse,
};
use emberd_proto::PROTOCOL_GENERATION;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::guest::Guest;
use super::script::{self, ExecContext};
use super::AgentCall;

type OutputStream = Pin<Box<dyn Stream<Item = Result<ExecOutput, Status>> + Send>>;

/// One agent session of one fake VM.
pub(super) struct ScriptedAgent {
    guest: Arc<Guest>,
}

impl ScriptedAgent {
    pub(super) fn new(guest: Arc<Guest>) -> Self {
        ScriptedAgent { guest }
    }
}

#[tonic::async_trait]
impl Agent for ScriptedAgent {
    async fn hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloResponse>, Status> {
        self.guest.took(AgentCall::Hello).await;
        let request = request.into_inner();
        if request.generation != PROTOCOL_GENERATION {
            return Err(Status::failed_precondition(format!(
                "host speaks protocol generation {}, this agent speaks {}",
                request.generation, PROTOCOL_GENERATION
            )));
        }
        let generation = if self.guest.backend.faults().wrong_generation {
            PROTOCOL_GENERATION + 1
        } else {
            PROTOCOL_GENERATION
        };
        Ok(Response::new(HelloResponse {
            generation,
            agent_version: "fake".to_owned(),
            capabilities: ["exec", "identity", capability::EXEC_BATCH]
                .map(String::from)
                .to_vec(),
        }))
    }

    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthResponse>, Status> {
        self.guest.health_calls.fetch_add(1, Ordering::SeqCst);
        self.guest.took(AgentCall::Health).await;
        if self.guest.health_hangs.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        Ok(Response::new(HealthResponse {
            ok: !self.guest.quiesced.load(Ordering::SeqCst),
            running_execs: u32::try_from(self.guest.running_execs.load(Ordering::SeqCst))
                .unwrap_or(u32::MAX),
            uptime_ms: u64::try_from(self.guest.booted_at.elapsed().as_millis())
                .unwrap_or(u64::MAX),
            warm_interpreters: self.guest.backend.warm_interpreters(),
        }))
    }

    type ExecStream = OutputStream;

    async fn exec(
        &self,
        request: Request<Streaming<ExecInput>>,
    ) -> Result<Response<OutputStream>, Status> {
        self.guest.took(AgentCall::Exec).await;
        if self.guest.quiesced.load(Ordering::SeqCst) {
            return Err(Status::failed_precondition(
                "the agent is quiesced for a snapshot",
            ));
        }
        let mut input = request.into_inner();
        let start = match input.message().await? {
            Some(ExecInput {
                kind: Some(exec_input::Kind::Start(start)),
            }) => start,
            _ => {
                return Err(Status::invalid_argument(
                    "the first exec message must be `start`",
                ))
            }
        };
        self.guest
            .backend
            .last_drain_limit_ms
            .store(start.drain_limit_ms, Ordering::SeqCst);
        if start.argv.is_empty() && start.interpreter.is_empty() {
            return Err(Status::invalid_argument(
                "exec needs argv or an interpreter",
            ));
        }
        let context = ExecContext {
            pid: self.guest.next_exec_pid.fetch_add(1, Ordering::SeqCst),
            release: self.guest.backend.release.subscribe(),
            blocked: self.guest.backend.blocked_execs.clone(),
            running: [
                self.guest.running_execs.clone(),
                self.guest.backend.running_execs.clone(),
            ],
        };
        let (tx, rx) = mpsc::channel(32);
        tokio::spawn(script::run(start, input, tx, context));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn set_identity(
        &self,
        request: Request<Identity>,
    ) -> Result<Response<SetIdentityResponse>, Status> {
        self.guest.took(AgentCall::SetIdentity).await;
        let identity = request.into_inner();
        *self.guest.identity.lock() = Some(identity.sandbox_id);
        Ok(Response::new(SetIdentityResponse {}))
    }

    async fn quiesce(
        &self,
        _: Request<QuiesceRequest>,
    ) -> Result<Response<QuiesceResponse>, Status> {
        self.guest.took(AgentCall::Quiesce).await;
        self.guest.quiesced.store(true, Ordering::SeqCst);
        Ok(Response::new(QuiesceResponse {}))
    }
}
