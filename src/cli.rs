//! Command line: `run`, `check`, `simulate`, `demo`. `anyhow` is used here and in `demo`
//! (both edges) only.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing::error;

use crate::app::Gcpool;
use crate::config::{Config, ProcessEnv};
use crate::shutdown;
use crate::telemetry::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "gcpool",
    version,
    about = "Credential-pool proxy and rate governor for the Genesys Cloud Platform API"
)]
struct Cli {
    /// Config file (runs the proxy when no subcommand is given).
    #[arg(long, global = true, env = "GCPOOL_CONFIG")]
    config: Option<PathBuf>,
    /// Log line format.
    #[arg(
        long,
        global = true,
        env = "GCPOOL_LOG_FORMAT",
        value_enum,
        default_value = "human"
    )]
    log_format: LogFormat,
    /// Log level when RUST_LOG is unset (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy (needs --config).
    Run,
    /// Load and validate the config; print it resolved, secrets redacted; exit 1 on errors.
    Check,
    /// Run a Genesys Cloud simulator (token endpoint + /api/v2/** with rate limits).
    Simulate(crate::sim::SimulateArgs),
    /// Simulator + gcpool + bursty load in one process: live summary, then a report
    /// comparing the same load without and with gcpool. Needs no credentials, no network.
    Demo(crate::demo::DemoArgs),
}

/// Entry point called by `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check) => check(cli.config),
        Some(Command::Simulate(args)) => {
            telemetry::init(cli.log_format, &cli.log_level);
            report(runtime().and_then(|rt| {
                rt.block_on(crate::sim::run_cli(args, shutdown::signal()))
                    .context("simulator failed")
            }))
        }
        Some(Command::Demo(args)) => {
            // The demo's own summary is the output; keep gcpool's logs to warnings.
            let level = if cli.log_level == "info" {
                "warn"
            } else {
                &cli.log_level
            };
            telemetry::init(cli.log_format, level);
            report(runtime().and_then(|rt| rt.block_on(crate::demo::run(args))))
        }
        Some(Command::Run) | None => {
            let Some(path) = cli.config else {
                eprintln!("error: --config FILE is required (see `gcpool --help`)");
                return ExitCode::from(2);
            };
            telemetry::init(cli.log_format, &cli.log_level);
            report(run(&path))
        }
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let runtime = runtime()?;
    // From here on SIGHUP no longer ends the process (tokio keeps the handler installed
    // once registered): one sent while the config loads is simply not acted on.
    drop(runtime.block_on(async { shutdown::Hangup::new("config reload on file change only") }));
    let config = Config::load(path, &ProcessEnv).map_err(|errors| {
        anyhow::anyhow!("{} is not a valid gcpool config:\n{errors}", path.display())
    })?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    runtime.block_on(async move {
        let gcpool = Gcpool::start(config).await?;
        shutdown::signal().await;
        gcpool.shutdown().trigger();
        gcpool.wait().await;
        Ok(())
    })
}

fn check(path: Option<PathBuf>) -> ExitCode {
    let Some(path) = path else {
        eprintln!("error: --config FILE is required");
        return ExitCode::from(2);
    };
    match Config::load(&path, &ProcessEnv) {
        Ok(config) => {
            for warning in &config.warnings {
                eprintln!("warning: {warning}");
            }
            print!("{}", config.redacted_yaml());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("error: {} is not a valid gcpool config:", path.display());
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            ExitCode::FAILURE
        }
    }
}
