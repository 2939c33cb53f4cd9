//! gcpool: a credential-pool HTTP forward proxy and rate governor for the Genesys Cloud
//! Platform API.
//!
//! # Request path
//!
//! ```text
//! server::serve ── one worker thread per core ── per-connection task ── [TLS] ── hyper (HTTP/1.1, h2)
//!    └─ Proxy::handle(req)
//!         1. inbound::check_target      CONNECT 405, foreign host 400, not /api/v2/ 404
//!         2. inbound::Authenticator     X-API-Key or Basic password, unless anonymous
//!         3. routes::RouteTable         operation template (metrics, budgets, allow-list 403)
//!         4. read body (≤ max_body_bytes, 413 past it)
//!         5. admission.admit()          soonest healthy client; token + route + org budgets
//!                                       reserved together; wait, or a local 429
//!         6. rewrite::upstream_request  hop-by-hop + caller credentials out, Bearer + Host in
//!         7. upstream.send()            429 → cool down + retry elsewhere; 401 → drop the token
//!                                       (re-minted ≤ once per interval) + retry; 502/503/504 →
//!                                       backoff, idempotent only
//!         8. answer: x-gcpool-client, x-gcpool-wait-ms; body streamed back
//!         9. Exchange::finish           metrics recorded once
//! ```
//!
//! # Layout
//!
//! - [`cli`]: commands (`run`, `check`, `simulate`, `demo`); [`app`]: the composition root;
//!   [`reload`]: the current config generation (pool, admission, inbound policy) and hot
//!   reload on SIGHUP or file change.
//! - [`config`]: YAML → validated [`config::Config`]; [`secret`]: redacting wrapper;
//!   [`routes`]: the Platform API operation table. These three are leaves.
//! - [`budget`]: sliding-window budgets and the store trait (no HTTP); [`admission`]: client
//!   choice and waiting over [`pool`] and [`budget`].
//! - [`inbound`], [`proxy`], [`token`], [`upstream`]: the rest of the request path.
//! - [`server`], [`tls`], [`admin`], [`shutdown`], [`metrics`], [`telemetry`]: serving and
//!   observing.
//! - [`sim`]: the Genesys Cloud simulator; [`demo`]: simulator + proxy + load. Neither is
//!   used by the proxy path.

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
pub mod reload;
pub mod routes;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod sim;
pub mod telemetry;
pub mod tls;
pub mod token;
pub mod upstream;
