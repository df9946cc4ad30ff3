//! The `Agent` service: Hello, Health, Exec, SetIdentity, Quiesce.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use emberd_proto::boundary::capability;
use emberd_proto::v1::agent_server::Agent;
use emberd_proto::v1::{
    exec_input, ExecInput, ExecOutput, HealthRequest, HealthResponse, HelloRequest, HelloResponse,
    Identity, QuiesceRequest, QuiesceResponse, SetIdentityResponse,
};
use emberd_proto::warm::WarmLanguage;
use emberd_proto::PROTOCOL_GENERATION;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::exec::{self, ExecEnv};
use crate::reaper::Reaper;

/// Whether the agent owns the machine (guest PID 1) or is a host process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Guest,
    Host,
}

/// State shared by every session of the agent.
pub struct AgentService {
    mode: Mode,
    reaper: Reaper,
    exec_env: Arc<ExecEnv>,
    started: Instant,
    running: Arc<AtomicU32>,
    quiescing: AtomicBool,
}

impl AgentService {
    pub fn new(mode: Mode, reaper: Reaper, exec_env: ExecEnv) -> Self {
        AgentService {
            mode,
            reaper,
            exec_env: Arc::new(exec_env),
            started: Instant::now(),
            running: Arc::new(AtomicU32::new(0)),
            quiescing: AtomicBool::new(false),
        }
    }

    /// Languages whose pre-started interpreter is ready.
    fn warm_interpreters(&self) -> Vec<String> {
        let env = &self.exec_env;
        let python = env.python.as_ref().is_some_and(|p| p.ready());
        let node = env.node.as_ref().is_some_and(|n| n.ready());
        [(python, WarmLanguage::Python), (node, WarmLanguage::Node)]
            .into_iter()
            .filter(|(ready, _)| *ready)
            .map(|(_, language)| language.as_str().to_owned())
            .collect()
    }

    /// Called when a new host connection starts: a quiesce ends there.
    pub fn new_session(&self) {
        self.quiescing.store(false, Ordering::SeqCst);
    }
}

type OutputStream = Pin<Box<dyn Stream<Item = Result<ExecOutput, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for AgentService {
    async fn hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloResponse>, Status> {
        let request = request.into_inner();
        if request.generation != PROTOCOL_GENERATION {
            return Err(Status::failed_precondition(format!(
                "host speaks protocol generation {}, this agent speaks {}",
                request.generation, PROTOCOL_GENERATION
            )));
        }
        Ok(Response::new(HelloResponse {
            generation: PROTOCOL_GENERATION,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            capabilities: [
                "exec",
                "files",
                "identity",
                capability::PTY,
                capability::TAR,
                capability::FILES_OWNER,
                capability::EXEC_BATCH,
            ]
            .into_iter()
            .map(String::from)
            .chain(
                self.exec_env
                    .python
                    .as_ref()
                    .map(|_| "fork-server:python".to_owned()),
            )
            .chain(self.exec_env.node.as_ref().map(|_| "spare:node".to_owned()))
            .collect(),
        }))
    }

    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthResponse>, Status> {
        Ok(Response::new(HealthResponse {
            ok: !self.quiescing.load(Ordering::SeqCst),
            running_execs: self.running.load(Ordering::SeqCst),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            warm_interpreters: self.warm_interpreters(),
        }))
    }

    type ExecStream = OutputStream;

    async fn exec(
        &self,
        request: Request<Streaming<ExecInput>>,
    ) -> Result<Response<OutputStream>, Status> {
        let received = Instant::now();
        if self.quiescing.load(Ordering::SeqCst) {
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
        if start.argv.is_empty() && start.interpreter.is_empty() {
            return Err(Status::invalid_argument(
                "exec needs argv or an interpreter",
            ));
        }
        if start
            .argv
            .iter()
            .chain(&start.interpreter)
            .any(|a| a.contains('\0'))
            || start
                .env
                .iter()
                .any(|(k, v)| k.is_empty() || k.contains(['=', '\0']) || v.contains('\0'))
        {
            return Err(Status::invalid_argument(
                "argv and env must not contain NUL bytes",
            ));
        }
        let (tx, mut rx) = mpsc::channel(32);
        // A batch exec that needs no more input answers in one piece: its
        // headers wait for its first message (for a short exec, the exit).
        let whole = start.batch_output && start.close_stdin;
        tokio::spawn(exec::run(
            self.exec_env.clone(),
            self.reaper.clone(),
            start,
            input,
            tx,
            self.running.clone(),
            received,
        ));
        if whole {
            let first = rx.recv().await;
            let rest = ReceiverStream::new(rx);
            return Ok(Response::new(Box::pin(
                futures::stream::iter(first).chain(rest),
            )));
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn set_identity(
        &self,
        request: Request<Identity>,
    ) -> Result<Response<SetIdentityResponse>, Status> {
        let identity = request.into_inner();
        if self.mode == Mode::Guest {
            crate::identity::apply(&identity).map_err(|e| Status::internal(e.to_string()))?;
        }
        // Quiesce stopped the spare before any snapshot; a restored clone
        // starts its own here, with its own random state.
        if let Some(node) = &self.exec_env.node {
            node.replenish();
        }
        Ok(Response::new(SetIdentityResponse {}))
    }

    async fn quiesce(
        &self,
        _: Request<QuiesceRequest>,
    ) -> Result<Response<QuiesceResponse>, Status> {
        self.quiescing.store(true, Ordering::SeqCst);
        if let Some(node) = &self.exec_env.node {
            node.stop();
        }
        nix::unistd::sync();
        if self.mode == Mode::Guest {
            // Freed page cache is zeroed (the kernel runs with init_on_free=1),
            // and zero pages cost next to nothing in a snapshot.
            let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
            let _ = std::fs::write("/proc/sys/vm/compact_memory", "1");
        }
        Ok(Response::new(QuiesceResponse {}))
    }
}
