//! `exec` and `run` output: streamed to the terminal as it arrives (the
//! default) or written once from a buffered answer, and the exit status
//! that follows the code's.

use std::io::Write;
use std::process::ExitCode;

use emberd_api::{ExecRequest, ExecResponse};
use emberd_client::Client;

/// Exit code of `exec`/`run` when the code timed out (as `timeout(1)` does).
pub const EXIT_TIMED_OUT: u8 = 124;
/// Exit code of `exec`/`run` when the code died by a signal or never started.
pub const EXIT_ABNORMAL: u8 = 125;

/// Runs `request` in sandbox `id`, printing its output as the daemon sends
/// it (`buffered`: once, from the whole answer); returns its exit status.
pub async fn exec(
    client: &Client,
    id: &str,
    request: &ExecRequest,
    buffered: bool,
) -> anyhow::Result<ExitCode> {
    if buffered {
        let response = client.exec(id, request).await?;
        return Ok(print_exec(&response));
    }
    let stream = client.exec_stream(id, request).await?;
    let exit = stream
        .drain(
            |bytes| {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(bytes);
                let _ = out.flush();
            },
            |bytes| {
                let _ = std::io::stderr().lock().write_all(bytes);
            },
        )
        .await?;
    Ok(print_exec(&exit))
}

/// Writes the code's output to the matching streams; returns its exit code.
pub fn print_exec(response: &ExecResponse) -> ExitCode {
    let _ = std::io::stdout().write_all(response.stdout.as_bytes());
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().write_all(response.stderr.as_bytes());
    if response.stdout_truncated || response.stderr_truncated {
        eprintln!("emberctl: output was cut at the daemon's limit");
    }
    match &response.error {
        Some(error) => {
            eprintln!("emberctl: {error}");
            if error == "execution timed out" {
                ExitCode::from(EXIT_TIMED_OUT)
            } else {
                ExitCode::from(EXIT_ABNORMAL)
            }
        }
        None => ExitCode::from(u8::try_from(response.exit_code).unwrap_or(EXIT_ABNORMAL)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(exit_code: i32, error: Option<&str>) -> ExecResponse {
        ExecResponse {
            exit_code,
            error: error.map(str::to_owned),
            ..ExecResponse::default()
        }
    }

    #[test]
    fn exit_codes_follow_the_sandbox() {
        assert_eq!(print_exec(&response(0, None)), ExitCode::from(0));
        assert_eq!(print_exec(&response(7, None)), ExitCode::from(7));
        assert_eq!(
            print_exec(&response(-1, Some("execution timed out"))),
            ExitCode::from(EXIT_TIMED_OUT)
        );
        assert_eq!(
            print_exec(&response(-1, Some("killed by signal 9"))),
            ExitCode::from(EXIT_ABNORMAL)
        );
    }
}
