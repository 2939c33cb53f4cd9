//! gcpool: a credential-pool HTTP forward proxy for the Genesys Cloud Platform API.

pub mod cli;
pub mod config;
pub mod secret;
pub mod sim;
