//! `emberctl shell ID`: an interactive terminal in a sandbox. Starts a
//! login shell (`bash -l`, else `sh -l`) on a PTY as a background process
//! and attaches to it over the WebSocket (`emberctl attach` attaches to a
//! process that is already running). The local terminal is in raw mode
//! while attached and is restored on every way out, a panic included; a
//! window size change is sent as a resize control frame.

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::process::ExitCode;

use emberd_api::{AttachControl, PtySize, StartProcessRequest};
use emberd_client::{AttachEvent, Client};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::exec::EXIT_ABNORMAL;

/// Picks the shell in the guest: bash when there is one.
const LOGIN_SHELL: &str =
    "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi";

/// The terminal size to start with when stdin is not a terminal.
const DEFAULT_SIZE: PtySize = PtySize { rows: 24, cols: 80 };

/// Raw mode on the local terminal for as long as this lives.
struct RawMode;

impl RawMode {
    fn enable() -> anyhow::Result<RawMode> {
        crossterm::terminal::enable_raw_mode()?;
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = crossterm::terminal::disable_raw_mode();
            previous(info);
        }));
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

fn terminal_size() -> Option<PtySize> {
    let (cols, rows) = crossterm::terminal::size().ok()?;
    (rows > 0 && cols > 0).then_some(PtySize {
        rows: rows.into(),
        cols: cols.into(),
    })
}

/// Reads stdin on a thread of its own: a blocking read cannot be
/// cancelled, and it must not hold up the runtime's shutdown. An empty
/// chunk means end of input.
fn read_stdin() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if tx.blocking_send(buf[..n].to_vec()).is_err() || n == 0 {
                return;
            }
        }
    });
    rx
}

/// `emberctl shell ID [--cmd ARG…]`; exits as the shell did.
pub async fn shell(client: &Client, id: &str, cmd: Vec<String>) -> anyhow::Result<ExitCode> {
    let interactive = std::io::stdin().is_terminal();
    let size = interactive
        .then(terminal_size)
        .flatten()
        .unwrap_or(DEFAULT_SIZE);
    let term = std::env::var("TERM")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "xterm-256color".into());
    let cmd = if cmd.is_empty() {
        vec!["sh".into(), "-c".into(), LOGIN_SHELL.into()]
    } else {
        cmd
    };
    let request = StartProcessRequest {
        cmd: Some(cmd),
        env: [("TERM".to_owned(), term)].into(),
        stdin: true,
        pty: Some(size),
        ..StartProcessRequest::default()
    };
    let pid = client.start_process(id, &request).await?;
    // From the start of the log: the prompt may be out before we attach.
    attach_terminal(client, id, pid, Some(0), true).await
}

/// `emberctl attach ID PID [--cursor N]`: stdin to the process, its output
/// to stdout, from log offset `cursor` (the current end when `None`); on a
/// terminal process, in raw mode with the local size; exits as it does.
pub async fn attach(
    client: &Client,
    id: &str,
    pid: u32,
    cursor: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let terminal = client.get_process(id, pid).await?.pty;
    attach_terminal(client, id, pid, cursor, terminal).await
}

async fn attach_terminal(
    client: &Client,
    id: &str,
    pid: u32,
    cursor: Option<u64>,
    terminal: bool,
) -> anyhow::Result<ExitCode> {
    let attach = client.attach(id, pid, cursor).await?;
    let (mut sender, mut receiver) = attach.split();
    let interactive = terminal && std::io::stdin().is_terminal();
    if interactive {
        if let Some(size) = terminal_size() {
            let resize = AttachControl::Resize {
                rows: size.rows,
                cols: size.cols,
            };
            sender.send_control(&resize).await?;
        }
    }

    let raw = if interactive {
        Some(RawMode::enable()?)
    } else {
        None
    };
    let mut stdin = read_stdin();
    let mut stdin_open = true;
    let mut winch = signal(SignalKind::window_change())?;
    let end = loop {
        tokio::select! {
            event = receiver.next() => match event {
                Some(Ok(AttachEvent::Output(bytes))) => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&bytes)?;
                    out.flush()?;
                }
                Some(Ok(AttachEvent::Dropped(d))) => {
                    eprint!("\r\nemberctl: {} bytes of output were dropped\r\n", d.dropped);
                }
                Some(Ok(AttachEvent::Refused(message))) => {
                    eprint!("\r\nemberctl: {message}\r\n");
                }
                Some(Ok(AttachEvent::End(end))) => break Ok(end),
                Some(Err(e)) => break Err(e),
                None => break Err(emberd_client::ClientError::StreamEnded),
            },
            chunk = stdin.recv(), if stdin_open => match chunk {
                Some(bytes) if !bytes.is_empty() => sender.send_stdin(&bytes).await?,
                _ => {
                    stdin_open = false;
                    sender.send_control(&AttachControl::Eof).await?;
                }
            },
            _ = winch.recv(), if interactive => {
                if let Some(size) = terminal_size() {
                    sender
                        .send_control(&AttachControl::Resize { rows: size.rows, cols: size.cols })
                        .await?;
                }
            }
        }
    };
    drop(raw);
    let end = match end {
        Ok(end) => end,
        Err(e) => {
            eprintln!(
                "\r\nemberctl: process {pid} is still running; `emberctl kill {id} {pid}` ends it"
            );
            return Err(e.into());
        }
    };
    if end.timed_out() {
        return Ok(ExitCode::from(crate::exec::EXIT_TIMED_OUT));
    }
    if let Some(code) = end.exit_code() {
        return Ok(ExitCode::from(u8::try_from(code).unwrap_or(EXIT_ABNORMAL)));
    }
    if let Some(signal) = end.signal() {
        return Ok(ExitCode::from(
            u8::try_from(128 + signal).unwrap_or(EXIT_ABNORMAL),
        ));
    }
    eprintln!("emberctl: {}", end.reason);
    Ok(ExitCode::from(EXIT_ABNORMAL))
}
