//! gcpool: a credential-pool HTTP forward proxy and rate governor for the Genesys Cloud
//! Platform API.
//!
//! # Request path
//!
//! ```text
//! server::serve ── accept ── per-connection task ── hyper auto builder (HTTP/1.1, h2c)
//!    └─ Proxy::handle(req)
//!         1. inbound::check_target      CONNECT 405, foreign host 400, not /api/v2/ 404
//!         2. inbound::Authenticator     X-API-Key or Basic password, unless anonymous
//!         3. read body (≤ max_body_bytes, 413 past it)
//!         4. pool.lease()               healthy client with the fewest requests in flight
//!         5. rewrite::upstream_request  hop-by-hop + caller credentials out, Bearer + Host in
//!         6. upstream.send()            401 → token refresh (single flight), retry once
//!         7. answer: x-gcpool-client, x-gcpool-wait-ms; body streamed back
//!         8. Exchange::finish           metrics recorded once
//! ```
//!
//! # Layout
//!
//! - [`cli`]: commands (`run`, `check`, `simulate`); [`app`]: the composition root.
//! - [`config`]: YAML → validated [`config::Config`]; [`secret`]: redacting wrapper.
//! - [`inbound`], [`proxy`], [`pool`], [`token`], [`upstream`]: the request path.
//! - [`server`], [`admin`], [`shutdown`], [`metrics`], [`telemetry`]: serving and observing.
//! - [`sim`]: the Genesys Cloud simulator; it uses no proxy module.

pub mod admin;
pub mod admission;
pub mod app;
pub mod budget;
pub mod cli;
pub mod config;
pub mod demo;
pub mod inbound;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod routes;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod sim;
pub mod telemetry;
pub mod token;
pub mod upstream;
