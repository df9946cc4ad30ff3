//! Starting an agent, running execs on it, and watching the processes they leave.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use emberd_proto::v1::agent_client::AgentClient;
use emberd_proto::v1::files_client::FilesClient;
use emberd_proto::v1::{exec_input, exec_output, ExecExit, ExecInput, ExecStart, HealthRequest};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// A running agent, killed on drop.
pub struct Agent {
    child: Child,
    socket: PathBuf,
    /// The directory the agent serves as `/`.
    pub root: tempfile::TempDir,
    /// The agent's directory for code files and interpreter scripts.
    pub tmp: tempfile::TempDir,
}

impl Agent {
    pub fn start() -> Agent {
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

    pub async fn agent(&self) -> AgentClient<Channel> {
        AgentClient::new(self.channel().await)
    }

    pub async fn files(&self) -> FilesClient<Channel> {
        FilesClient::new(self.channel().await)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything one exec sent back.
#[derive(Debug, Default)]
pub struct Outcome {
    pub warm: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: ExecExit,
}

pub fn sh(script: &str) -> ExecStart {
    ExecStart {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..ExecStart::default()
    }
}

/// An interpreter the agent can keep pre-started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Python,
    Node,
}

/// Whether an exec starts its interpreter afresh or asks for the pre-started one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Cold,
    Warm,
}

impl Language {
    /// The name in `warm_language` and in `Health`'s warm interpreters.
    pub fn name(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Node => "node",
        }
    }

    /// An exec of `code` started as `start` says.
    pub fn exec(self, start: Start, code: &str) -> ExecStart {
        let (interpreter, file_suffix) = match self {
            Language::Python => (vec!["python3".into(), "-u".into()], ".py"),
            Language::Node => (vec!["node".into()], ".js"),
        };
        ExecStart {
            interpreter,
            code: code.as_bytes().to_vec(),
            file_suffix: file_suffix.into(),
            warm_language: match start {
                Start::Cold => String::new(),
                Start::Warm => self.name().into(),
            },
            ..ExecStart::default()
        }
    }
}

/// Waits until `Health` lists `language` among the warm interpreters.
pub async fn wait_until_warm(client: &mut AgentClient<Channel>, language: Language) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let health = client.health(HealthRequest {}).await.unwrap().into_inner();
        if health
            .warm_interpreters
            .iter()
            .any(|w| w == language.name())
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the warm {language:?} never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `exec` of `language` as `start` says and checks it ran that way: a
/// warm exec waits for a ready pre-started interpreter and must run on it.
pub async fn run_started(
    client: &mut AgentClient<Channel>,
    language: Language,
    start: Start,
    exec: ExecStart,
    inputs: Vec<exec_input::Kind>,
) -> Outcome {
    if start == Start::Warm {
        wait_until_warm(client, language).await;
    }
    let out = run_with(client, exec, inputs).await;
    assert_eq!(
        out.warm,
        start == Start::Warm,
        "{start:?} {language:?} ran {}: {out:?}",
        if out.warm { "warm" } else { "cold" }
    );
    out
}

/// Runs `code` of `language` as `start` says, with stdin closed at once.
pub async fn run_code(
    client: &mut AgentClient<Channel>,
    language: Language,
    start: Start,
    code: &str,
) -> Outcome {
    let exec = language.exec(start, code);
    run_started(client, language, start, exec, vec![close_stdin()]).await
}

/// Runs one exec, sending `inputs` after the start message.
pub async fn run_with(
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

/// Runs one exec with stdin closed at once.
pub async fn run(client: &mut AgentClient<Channel>, start: ExecStart) -> Outcome {
    run_with(client, start, vec![close_stdin()]).await
}

pub fn close_stdin() -> exec_input::Kind {
    exec_input::Kind::CloseStdin(Default::default())
}

/// A word for a test to put on the command line of the processes it starts
/// (as `sleep <marker>`, a valid duration of 1000 s and a bit) and find them
/// by. `tag` tells apart the tests of this binary, which may share a process;
/// the fixed width keeps one marker from being a prefix of another.
pub fn marker(tag: u32) -> String {
    format!("1000.{:07}{tag:03}", std::process::id())
}

/// How long processes killed by the agent may take to go. SIGKILL is
/// immediate; the bound covers a loaded machine.
pub const GONE_BOUND: Duration = Duration::from_secs(5);

/// Waits up to [`GONE_BOUND`] until no live process has `marker` in its
/// command line; fails the test if one is still there.
pub async fn assert_gone(marker: &str) {
    let deadline = Instant::now() + GONE_BOUND;
    while !processes_with(marker).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = processes_with(marker);
    assert!(left.is_empty(), "still running with {marker:?}: {left:?}");
}

/// Live processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<u32> {
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
