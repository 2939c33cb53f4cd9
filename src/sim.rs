//! Genesys Cloud simulator (`gcpool simulate`): token endpoint + `/api/v2/**` with limits.
//!
//! Kept apart from the proxy: it uses no proxy module, so it cannot drift into it.

/// Flags of `gcpool simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: std::net::SocketAddr,
}

/// Runs the simulator until `shutdown` resolves.
///
/// # Errors
/// When the listener cannot be bound.
pub async fn run_cli(
    args: SimulateArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let _ = (args, shutdown);
    Err(std::io::Error::other("simulator not implemented yet"))
}
