//! Command line: `run`, `check`, `simulate`, `demo`. `anyhow` is used here and in `demo`
//! (both edges) only.
//!
//! Every error is reported once: as `error: …` on stderr with human logs, as one `error`
//! log event with JSON logs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use tracing::error;

use crate::app::Gcpool;
use crate::config::{Config, ConfigErrors, ProcessEnv};
use crate::shutdown;
use crate::telemetry::{self, LogFormat, LogLevel};

#[derive(Debug, Parser)]
#[command(
    name = "gcpool",
    version,
    about = "Credential-pool proxy and rate governor for the Genesys Cloud Platform API"
)]
struct Cli {
    /// `gcpool --config FILE` with no command runs the proxy, and `gcpool --config FILE run`
    /// is the same as `gcpool run --config FILE`: kept for scripts, not shown in help.
    #[arg(long, env = "GCPOOL_CONFIG", hide = true)]
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
    /// Log level; given, it wins over RUST_LOG [default: RUST_LOG if set, else info]
    #[arg(long, global = true, value_enum)]
    log_level: Option<LogLevel>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy.
    Run(ConfigArg),
    /// Load and validate the config; print it resolved, secrets redacted; exit 1 on errors.
    Check(ConfigArg),
    /// Run a Genesys Cloud simulator (token endpoint + /api/v2/** with rate limits).
    Simulate(crate::sim::SimulateArgs),
    /// Simulator + gcpool + bursty load in one process: live summary, then a report
    /// comparing the same load without and with gcpool. Needs no credentials, no network.
    Demo(crate::demo::DemoArgs),
}

/// `--config FILE` of the commands that read a config.
#[derive(Debug, Args)]
struct ConfigArg {
    /// Config file (YAML).
    #[arg(long, env = "GCPOOL_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Entry point called by `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format;
    match cli.command {
        Some(Command::Check(arg)) => match arg.config.or(cli.config) {
            Some(path) => check(&path),
            None => missing_config("check"),
        },
        Some(Command::Simulate(args)) => {
            telemetry::init(format, cli.log_level, LogLevel::Info);
            report(
                format,
                runtime().and_then(|rt| {
                    rt.block_on(crate::sim::run_cli(args, shutdown::signal()))
                        .context("simulator failed")
                }),
            )
        }
        Some(Command::Demo(args)) => {
            // The demo's own summary is the output; keep gcpool's logs to warnings.
            telemetry::init(format, cli.log_level, LogLevel::Warn);
            report(
                format,
                runtime().and_then(|rt| rt.block_on(crate::demo::run(args))),
            )
        }
        Some(Command::Run(arg)) => match arg.config.or(cli.config) {
            Some(path) => {
                telemetry::init(format, cli.log_level, LogLevel::Info);
                report(format, run(&path))
            }
            None => missing_config("run"),
        },
        None => match cli.config {
            Some(path) => {
                telemetry::init(format, cli.log_level, LogLevel::Info);
                report(format, run(&path))
            }
            None => {
                // A bare `gcpool`: say what it can do.
                eprint!("{}", Cli::command().render_help());
                ExitCode::from(2)
            }
        },
    }
}

fn missing_config(command: &str) -> ExitCode {
    eprintln!(
        "error: `gcpool {command}` needs --config FILE (or GCPOOL_CONFIG); \
         see `gcpool {command} --help`"
    );
    ExitCode::from(2)
}

/// Reports a failed command once, in the log format chosen.
fn report(format: LogFormat, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match format {
                // A log pipeline reads one JSON event; nothing else is written.
                LogFormat::Json => error!("{e:#}"),
                LogFormat::Human => eprintln!("error: {e:#}"),
            }
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

/// `FILE is not a valid gcpool config:` and one indented line per error.
fn invalid(path: &Path, errors: &ConfigErrors) -> String {
    let mut text = format!("{} is not a valid gcpool config:", path.display());
    for e in &errors.0 {
        text.push_str("\n  ");
        text.push_str(&e.to_string());
    }
    text
}

fn run(path: &Path) -> anyhow::Result<()> {
    let runtime = runtime()?;
    // From here on SIGHUP no longer ends the process (tokio keeps the handler installed
    // once registered): one sent while the config loads is simply not acted on.
    drop(runtime.block_on(async { shutdown::Hangup::new("config reload on file change only") }));
    let config = Config::load(path, &ProcessEnv)
        .map_err(|errors| anyhow::anyhow!(invalid(path, &errors)))?;
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

fn check(path: &Path) -> ExitCode {
    match Config::load(path, &ProcessEnv) {
        Ok(config) => {
            for warning in &config.warnings {
                eprintln!("warning: {warning}");
            }
            print!("{}", config.redacted_yaml());
            // As YAML comments: the output stays the config, readable by a script.
            println!("# callers, in effect:");
            for line in config.callers_explained() {
                println!("#   {line}");
            }
            if let Some(gateway) = config.gateway_explained() {
                println!("# {gateway}");
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("error: {}", invalid(path, &errors));
            ExitCode::FAILURE
        }
    }
}
