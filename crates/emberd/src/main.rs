//! The `emberd` command: `serve`, `image build`, `doctor`, `mcp`, `openapi`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "emberd",
    version,
    about = "Run untrusted code in throw-away microVMs"
)]
struct Cli {
    /// How log lines are written to stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "EMBERD_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: emberd::logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API.
    Serve(emberd::config::ServeArgs),
    /// Build or inspect guest images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Check what this host can run, with a fix for each problem, and which
    /// backend `serve` would run with these settings.
    Doctor(emberd::config::ServeArgs),
    /// Serve MCP (Model Context Protocol) on stdio as a client of a running
    /// daemon, for agents that launch their tools as commands.
    Mcp(emberd::config::McpArgs),
    /// Print the OpenAPI 3.1 document of the HTTP API (as `docs/openapi.json`
    /// holds it: with the bearer requirement of a daemon that has tokens).
    Openapi,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build the kernel, initramfs and language packs (a no-op when up to date).
    Build(emberd::image::BuildArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    emberd::logging::init(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(emberd::serve::run(args))
                    .map_err(anyhow::Error::from)
            }),
        Command::Mcp(args) => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(emberd::mcp::stdio::run(args))
                    .map_err(anyhow::Error::from)
            }),
        Command::Openapi => {
            print!("{}", emberd::api::openapi_json(true));
            Ok(())
        }
        Command::Doctor(args) => return ExitCode::from(emberd::doctor::run(&args) as u8),
        Command::Image(ImageCommand::Build(args)) => emberd::image::build(&args)
            .map(|report| println!("{report}"))
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("emberd: {}", emberd::error_chain::render(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
