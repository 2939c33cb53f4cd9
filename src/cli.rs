//! Command line: `run`, `check`, `simulate`, `demo`. The only place `anyhow` is used.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, ProcessEnv};

#[derive(Debug, Parser)]
#[command(
    name = "gcpool",
    version,
    about = "Credential-pool proxy and rate governor for the Genesys Cloud Platform API"
)]
struct Cli {
    /// Config file (runs the proxy when no subcommand is given).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy.
    Run,
    /// Load and validate the config; print it resolved, secrets redacted.
    Check,
    /// Run a Genesys Cloud simulator.
    Simulate(crate::sim::SimulateArgs),
}

/// Entry point called by `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check) => check(cli.config),
        _ => {
            eprintln!("error: not implemented yet");
            ExitCode::FAILURE
        }
    }
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
