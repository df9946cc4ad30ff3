//! `ps`, `logs` and `kill`: a sandbox's background processes.

use std::io::Write;
use std::process::ExitCode;

use emberd_api::{ProcessInfo, ProcessState};
use emberd_client::{Client, ProcessEvent, StreamKind};

use crate::exec::{EXIT_ABNORMAL, EXIT_TIMED_OUT};

/// The exit status that mirrors how a process ended: its exit code, 128 +
/// the signal for a signal death (as shells do), 124 for a timeout, 125
/// when it was lost with its sandbox.
pub fn process_exit(info: &ProcessInfo) -> ExitCode {
    if info.timed_out {
        return ExitCode::from(EXIT_TIMED_OUT);
    }
    match info.state {
        ProcessState::Exited => {
            ExitCode::from(u8::try_from(info.exit_code.unwrap_or(0)).unwrap_or(EXIT_ABNORMAL))
        }
        ProcessState::Killed => info
            .signal
            .and_then(|s| u8::try_from(128 + s).ok())
            .map_or(ExitCode::from(EXIT_ABNORMAL), ExitCode::from),
        ProcessState::Lost | ProcessState::Running => ExitCode::from(EXIT_ABNORMAL),
    }
}

fn state_name(state: ProcessState) -> &'static str {
    match state {
        ProcessState::Running => "running",
        ProcessState::Exited => "exited",
        ProcessState::Killed => "killed",
        ProcessState::Lost => "lost",
    }
}

/// How a process ended, in a few words ("0", "signal 15", "-").
fn outcome(info: &ProcessInfo) -> String {
    match (info.exit_code, info.signal) {
        _ if info.timed_out => "timed out".into(),
        (_, Some(signal)) => format!("signal {signal}"),
        (Some(code), None) => code.to_string(),
        (None, None) => "-".into(),
    }
}

/// `emberctl ps ID`.
pub async fn ps(client: &Client, id: &str, json: bool) -> anyhow::Result<()> {
    let processes = client.list_processes(id).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&processes)?);
        return Ok(());
    }
    println!(
        "{:<8} {:<8} {:<10} {:<4} {:<25} COMMAND",
        "PID", "STATE", "EXIT", "PTY", "STARTED"
    );
    for p in &processes {
        println!(
            "{:<8} {:<8} {:<10} {:<4} {:<25} {}",
            p.pid,
            state_name(p.state),
            outcome(p),
            if p.pty { "yes" } else { "-" },
            p.started_at,
            p.command.join(" ")
        );
    }
    Ok(())
}

fn write_output(stream: StreamKind, bytes: &[u8]) {
    match stream {
        StreamKind::Stdout => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(bytes);
            let _ = out.flush();
        }
        StreamKind::Stderr => {
            let _ = std::io::stderr().lock().write_all(bytes);
        }
    }
}

fn stream_kind(name: &str) -> StreamKind {
    if name == emberd_api::stream::event::STDERR {
        StreamKind::Stderr
    } else {
        StreamKind::Stdout
    }
}

fn report_dropped(bytes: u64) {
    eprintln!("emberctl: {bytes} bytes of output fell off the start of the log");
}

/// `emberctl logs ID PID [-f]`: the kept output from `cursor`; with
/// `follow`, then live until the process ends (exiting as it did).
pub async fn logs(
    client: &Client,
    id: &str,
    pid: u32,
    cursor: u64,
    follow: bool,
) -> anyhow::Result<ExitCode> {
    if !follow {
        let mut cursor = cursor;
        loop {
            let page = client.output_page(id, pid, cursor).await?;
            if page.dropped > 0 {
                report_dropped(page.dropped);
            }
            for chunk in &page.chunks {
                let bytes = emberd_client::decode_output(&chunk.event)?;
                write_output(stream_kind(&chunk.stream), &bytes);
            }
            // A page may stop short of the end of the log: read on.
            if page.complete || page.next_cursor <= cursor || page.chunks.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            cursor = page.next_cursor;
        }
    }
    let mut stream = client.follow_output(id, pid, cursor).await?;
    while let Some(event) = stream.next().await {
        match event? {
            ProcessEvent::Output { stream, data, .. } => write_output(stream, &data),
            ProcessEvent::Dropped(dropped) => report_dropped(dropped.dropped),
            ProcessEvent::Exit(info) => return Ok(process_exit(&info)),
        }
    }
    anyhow::bail!("the output stream ended before the process did")
}

/// `emberctl kill ID PID [SIGNAL]`.
pub async fn kill(client: &Client, id: &str, pid: u32, signal: &str) -> anyhow::Result<()> {
    client.signal_process(id, pid, signal).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(state: ProcessState, exit_code: Option<i32>, signal: Option<i32>) -> ProcessInfo {
        ProcessInfo {
            pid: 7,
            command: vec!["x".into()],
            state,
            exit_code,
            signal,
            timed_out: false,
            error: None,
            started_at: "t".into(),
            ended_at: None,
            pty: false,
            output_bytes: 0,
            output_dropped: 0,
        }
    }

    #[test]
    fn exit_statuses_mirror_how_the_process_ended() {
        let exited = info(ProcessState::Exited, Some(3), None);
        assert_eq!(process_exit(&exited), ExitCode::from(3));
        let killed = info(ProcessState::Killed, None, Some(15));
        assert_eq!(process_exit(&killed), ExitCode::from(143));
        assert_eq!(outcome(&killed), "signal 15");
        let timed_out = ProcessInfo {
            timed_out: true,
            ..info(ProcessState::Killed, None, Some(9))
        };
        assert_eq!(process_exit(&timed_out), ExitCode::from(EXIT_TIMED_OUT));
        let lost = info(ProcessState::Lost, None, None);
        assert_eq!(process_exit(&lost), ExitCode::from(EXIT_ABNORMAL));
        assert_eq!(outcome(&lost), "-");
    }
}
