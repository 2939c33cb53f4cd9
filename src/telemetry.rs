//! Logging: `tracing` to stderr, human format (colours on a terminal) or JSON.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// `--log-level`: the most detailed level logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
    Off,
}

impl LogLevel {
    fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
            Self::Off => "off",
        }
    }
}

/// Installs the global subscriber. `level` (the `--log-level` flag) wins; without it
/// `RUST_LOG` is used when set, else `default`. A `RUST_LOG` that does not parse is named
/// on stderr and `default` is used. Calling it twice is harmless (the second call does
/// nothing).
pub fn init(format: LogFormat, level: Option<LogLevel>, default: LogLevel) {
    let filter = match (level, std::env::var("RUST_LOG")) {
        (Some(level), _) => EnvFilter::new(level.as_str()),
        (None, Ok(spec)) if !spec.trim().is_empty() => {
            EnvFilter::try_new(&spec).unwrap_or_else(|err| {
                eprintln!(
                    "warning: RUST_LOG={spec:?} is not a log filter ({err}); logging at {}",
                    default.as_str()
                );
                EnvFilter::new(default.as_str())
            })
        }
        (None, _) => EnvFilter::new(default.as_str()),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Human => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

/// `error: cause: cause` for one log field.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
