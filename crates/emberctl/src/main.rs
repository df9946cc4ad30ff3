//! `emberctl`: the command-line client of emberd.
//!
//! Every command is one or a few API calls through `emberd-client`. Errors
//! are printed as one line on stderr with a non-zero exit; `exec` and `run`
//! exit with the sandbox's own exit code.

mod bench;

use std::io::{Read, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use emberd_api::{ExecRequest, ExecResponse, SandboxInfo};
use emberd_client::{Client, ClientError, DEFAULT_ADDR};

/// Exit code of `exec`/`run` when the code timed out (as `timeout(1)` does).
const EXIT_TIMED_OUT: u8 = 124;
/// Exit code of `exec`/`run` when the code died by a signal or never started.
const EXIT_ABNORMAL: u8 = 125;

#[derive(Parser)]
#[command(name = "emberctl", version, about = "Command-line client of emberd")]
struct Cli {
    /// Address of the daemon.
    #[arg(long, env = "EMBERD_ADDR", default_value = DEFAULT_ADDR, global = true)]
    addr: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a sandbox and print its id.
    Create {
        /// Language pack (python, shell, node).
        #[arg(long)]
        pack: Option<String>,
    },
    /// Run code in a sandbox; exits with the code's exit status.
    Exec {
        id: String,
        #[command(flatten)]
        code: CodeArgs,
    },
    /// Create a sandbox, run code in it, delete it.
    Run {
        #[arg(long)]
        pack: Option<String>,
        #[command(flatten)]
        code: CodeArgs,
    },
    /// List sandboxes.
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one sandbox: state, backend, VMM process, console log tail.
    Inspect { id: String },
    /// Delete sandboxes.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Show the daemon's settings.
    Info,
    /// Benchmark: start daemons, measure create/exec/delete, print a table.
    Bench(bench::BenchArgs),
}

#[derive(clap::Args)]
struct CodeArgs {
    /// The code to run; `-` reads it from stdin.
    code: String,
    /// Text given to the code on stdin.
    #[arg(long)]
    stdin: Option<String>,
    /// Time limit in milliseconds.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Who runs the code in the guest: `sandbox` (default) or `root`.
    #[arg(long)]
    user: Option<String>,
}

impl CodeArgs {
    fn request(self) -> anyhow::Result<ExecRequest> {
        let code = if self.code == "-" {
            let mut code = String::new();
            std::io::stdin().read_to_string(&mut code)?;
            code
        } else {
            self.code
        };
        Ok(ExecRequest {
            code,
            stdin: self.stdin,
            timeout_ms: self.timeout_ms,
            user: self.user,
        })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("emberctl: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

fn describe(error: &anyhow::Error) -> String {
    match error.downcast_ref::<ClientError>() {
        Some(e @ ClientError::Unreachable { .. }) => {
            format!("{e} (is `emberd serve` running? start it with `make run`)")
        }
        Some(e) if e.is_unauthorized() => {
            format!("{e} (set EMBERD_TOKEN to one of the daemon's tokens)")
        }
        Some(e) => e.to_string(),
        None => format!("{error:#}"),
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut client = Client::new(&cli.addr)?;
    // From the environment only: a flag would show the token in `ps`.
    if let Some(token) = std::env::var("EMBERD_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        client = client.with_token(token.trim());
    }
    match cli.command {
        Command::Bench(args) => bench::run(args).await?,
        Command::Create { pack } => {
            println!("{}", client.create_sandbox(pack.as_deref()).await?);
        }
        Command::Exec { id, code } => {
            let response = client.exec(&id, &code.request()?).await?;
            return Ok(print_exec(&response));
        }
        Command::Run { pack, code } => {
            let request = code.request()?;
            let id = client.create_sandbox(pack.as_deref()).await?;
            let result = client.exec(&id, &request).await;
            let deleted = client.delete_sandbox(&id).await;
            let response = result?;
            deleted?;
            return Ok(print_exec(&response));
        }
        Command::Ls { json } => {
            let sandboxes = client.list_sandboxes().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&sandboxes)?);
            } else {
                print_table(&sandboxes);
            }
        }
        Command::Inspect { id } => {
            let info = client.get_sandbox(&id).await?;
            print_inspect(&info);
        }
        Command::Rm { ids } => {
            let mut failed = false;
            for id in ids {
                match client.delete_sandbox(&id).await {
                    Ok(()) => println!("{id}"),
                    Err(e) => {
                        eprintln!("emberctl: {id}: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Info => {
            println!("{}", serde_json::to_string_pretty(&client.info().await?)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the code's output to the matching streams; returns its exit code.
fn print_exec(response: &ExecResponse) -> ExitCode {
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

fn print_table(sandboxes: &[SandboxInfo]) {
    println!(
        "{:<16} {:<8} {:<9} {:<12} {:<18} CREATED",
        "ID", "PACK", "STATE", "BACKEND", "BOOT"
    );
    for s in sandboxes {
        println!(
            "{:<16} {:<8} {:<9} {:<12} {:<18} {}",
            s.id,
            s.pack,
            state_name(s),
            s.backend,
            s.boot_path.as_deref().unwrap_or("-"),
            s.created_at
        );
    }
}

fn state_name(info: &SandboxInfo) -> String {
    serde_json::to_value(info.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn print_inspect(info: &SandboxInfo) {
    println!("id:         {}", info.id);
    println!("pack:       {}", info.pack);
    println!("state:      {}", state_name(info));
    println!("backend:    {}", info.backend);
    println!("boot path:  {}", info.boot_path.as_deref().unwrap_or("-"));
    println!("created at: {}", info.created_at);
    match info.vmm_pid {
        Some(pid) => println!("VMM pid:    {pid}"),
        None => println!("VMM pid:    -"),
    }
    if let Some(tail) = info.console_tail.as_deref().filter(|t| !t.is_empty()) {
        println!("console (last lines):");
        for line in tail.lines() {
            println!("  {line}");
        }
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
