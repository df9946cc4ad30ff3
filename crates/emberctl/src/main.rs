//! `emberctl`: the command-line client of emberd.
//!
//! Every command is one or a few API calls through `emberd-client`. Errors
//! are printed as one line on stderr with a non-zero exit; `exec`, `run`,
//! `logs -f` and `shell` exit with the sandbox process's own exit code.

mod bench;
mod cp;
mod exec;
mod procs;
mod shell;

use std::io::Read;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use emberd_api::{ExecRequest, SandboxInfo, StartProcessRequest};
use emberd_client::{Client, ClientError, DEFAULT_ADDR};

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
    /// Run code in a sandbox, printing its output as it comes; exits with
    /// the code's exit status.
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
    /// Start a background process; prints its pid.
    Start {
        id: String,
        /// The program and its arguments (after `--`).
        #[arg(required = true, last = true)]
        cmd: Vec<String>,
        /// Keep stdin open (for `shell`-like use over the WebSocket).
        #[arg(long)]
        stdin: bool,
        /// Run on a terminal of ROWSxCOLS, e.g. 24x80.
        #[arg(long, value_parser = parse_size)]
        pty: Option<emberd_api::PtySize>,
        /// Kill the process after this many milliseconds.
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Who runs it: `sandbox` (default) or `root`.
        #[arg(long)]
        user: Option<String>,
    },
    /// List a sandbox's background processes.
    Ps {
        id: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a background process's output; `-f` follows it until it ends.
    Logs {
        id: String,
        pid: u32,
        /// Follow: stream new output until the process ends (reconnecting
        /// from the last byte on a broken connection); exits as it did.
        #[arg(short, long)]
        follow: bool,
        /// Start at this byte offset of the process's log.
        #[arg(long, default_value_t = 0)]
        cursor: u64,
    },
    /// Send a signal (default TERM) to a background process.
    Kill {
        id: String,
        pid: u32,
        /// A name (`TERM`, `SIGKILL`, `INT`) or a number.
        #[arg(default_value = "TERM")]
        signal: String,
    },
    /// An interactive terminal in a sandbox (a login shell on a PTY).
    Shell {
        id: String,
        /// Run this instead of the login shell (after `--`).
        #[arg(last = true)]
        cmd: Vec<String>,
    },
    /// Attach to a running background process: stdin in, output out (a
    /// terminal in raw mode when the process has one).
    Attach {
        id: String,
        pid: u32,
        /// Replay its output from this byte offset of its log [default: only
        /// what comes next].
        #[arg(long)]
        cursor: Option<u64>,
    },
    /// Copy a file or directory: `cp LOCAL ID:/path` or `cp ID:/path LOCAL`.
    Cp(cp::CpArgs),
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
    /// Wait for the whole answer and print it at once (the unary exec)
    /// instead of streaming output as it comes.
    #[arg(long)]
    buffered: bool,
}

impl CodeArgs {
    fn request(self) -> anyhow::Result<(ExecRequest, bool)> {
        let code = if self.code == "-" {
            let mut code = String::new();
            std::io::stdin().read_to_string(&mut code)?;
            code
        } else {
            self.code
        };
        let request = ExecRequest {
            code,
            stdin: self.stdin,
            timeout_ms: self.timeout_ms,
            user: self.user,
        };
        Ok((request, self.buffered))
    }
}

/// `ROWSxCOLS` as a terminal size.
fn parse_size(text: &str) -> Result<emberd_api::PtySize, String> {
    let (rows, cols) = text
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{text:?} is not ROWSxCOLS"))?;
    let number = |n: &str| n.trim().parse::<u32>().map_err(|e| format!("{n:?}: {e}"));
    Ok(emberd_api::PtySize {
        rows: number(rows)?,
        cols: number(cols)?,
    })
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
        // With its causes: a WebSocket or transport failure says little alone.
        _ => format!("{error:#}"),
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
            let (request, buffered) = code.request()?;
            return exec::exec(&client, &id, &request, buffered).await;
        }
        Command::Run { pack, code } => {
            let (request, buffered) = code.request()?;
            let id = client.create_sandbox(pack.as_deref()).await?;
            let result = exec::exec(&client, &id, &request, buffered).await;
            let deleted = client.delete_sandbox(&id).await;
            let code = result?;
            deleted?;
            return Ok(code);
        }
        Command::Start {
            id,
            cmd,
            stdin,
            pty,
            timeout_ms,
            user,
        } => {
            let request = StartProcessRequest {
                cmd: Some(cmd),
                stdin,
                pty,
                timeout_ms,
                user,
                ..StartProcessRequest::default()
            };
            println!("{}", client.start_process(&id, &request).await?);
        }
        Command::Ps { id, json } => procs::ps(&client, &id, json).await?,
        Command::Logs {
            id,
            pid,
            follow,
            cursor,
        } => return procs::logs(&client, &id, pid, cursor, follow).await,
        Command::Kill { id, pid, signal } => procs::kill(&client, &id, pid, &signal).await?,
        Command::Shell { id, cmd } => return shell::shell(&client, &id, cmd).await,
        Command::Attach { id, pid, cursor } => {
            return shell::attach(&client, &id, pid, cursor).await
        }
        Command::Cp(args) => cp::cp(&client, args).await?,
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
    use clap::CommandFactory as _;

    #[test]
    fn terminal_sizes_parse() {
        assert_eq!(
            parse_size("24x80").unwrap(),
            emberd_api::PtySize { rows: 24, cols: 80 }
        );
        assert!(parse_size("24").is_err());
        assert!(parse_size("ax80").is_err());
    }

    #[test]
    fn the_command_line_parses() {
        Cli::command().debug_assert();
        let cli =
            Cli::try_parse_from(["emberctl", "exec", "sb", "print(1)", "--buffered"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Exec {
                code: CodeArgs { buffered: true, .. },
                ..
            }
        ));
        let cli = Cli::try_parse_from(["emberctl", "kill", "sb", "7"]).unwrap();
        assert!(
            matches!(cli.command, Command::Kill { pid: 7, ref signal, .. } if signal == "TERM")
        );
        let cli = Cli::try_parse_from([
            "emberctl", "start", "sb", "--pty", "24x80", "--", "sleep", "9",
        ])
        .unwrap();
        assert!(
            matches!(cli.command, Command::Start { ref cmd, pty: Some(_), .. } if cmd == &["sleep", "9"])
        );
        let cli = Cli::try_parse_from(["emberctl", "attach", "sb", "7", "--cursor", "0"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Attach {
                pid: 7,
                cursor: Some(0),
                ..
            }
        ));
        let cli = Cli::try_parse_from(["emberctl", "logs", "sb", "7", "-f"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Logs {
                follow: true,
                cursor: 0,
                ..
            }
        ));
    }
}
