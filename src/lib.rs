//! gcpool: a credential-pool HTTP forward proxy and rate governor for the Genesys Cloud
//! Platform API.
//!
//! # Request path
//!
//! ```text
//! server::serve ── one worker thread per core ── per-connection task ── [TLS] ── hyper (HTTP/1.1, h2)
//!    └─ Proxy::handle(req)
//!         1. inbound::Policy::check      target (CONNECT 405, foreign host 400, not /api/v2/ 404,
//!                                        dot segments 400), API key 401, route + method 405,
//!                                        allow-list 403, body (413, 408, in-flight cap 503)
//!                                        → CallerRequest { route, body }; with inbound.gateway,
//!                                        `{api_path}` stripped first, a caller token (Bearer)
//!                                        counts as a key, and a login at
//!                                        `{login_path}/oauth/token` is answered here with a
//!                                        caller token (inbound::gateway; nothing spent)
//!         on a cached route (proxy::cached): a fresh answer from cache::Store (hit), else
//!         one upstream call per key (cache::Flights; the others wait for its answer), kept
//!         when it may be; the last good answer instead of a 429 or an upstream failure
//!         then attempts, at most 4 (proxy::attempts; a stale token refused and a client lost
//!         while waiting are free, once per client), each:
//!         2. generation::Live::admit     admission.admit(): soonest healthy client; token + route
//!                                        + org budgets reserved together; wait, or a local 429;
//!                                        re-admitted when a reload changed its budgets meanwhile
//!         3. proxy::rewrite              hop-by-hop + caller credentials out, Bearer + Host in
//!         4. upstream::Upstream::attempt send, classify → Outcome: answered, rate-limited
//!                                        (parsed limit), unauthorized, transient, failed
//!         5. Attempts::judge             429 → cool down + retry elsewhere; 401 → drop the token
//!                                        + retry; 502/503/504, lost connection → backoff,
//!                                        idempotent methods (any method when the request never
//!                                        reached the upstream); else done
//!         6. answer: x-gcpool-client, x-gcpool-wait-ms; body streamed back
//!    proxy::Exchange records every fact once, as it happens (admission wait, each upstream
//!    exchange, the answer).
//!    Refusals: inbound::Refusal, admission::Refusal → proxy::Reject, the one place they become
//!    answers (status, x-gcpool-reason, Genesys body).
//! ```
//!
//! # Layout
//!
//! Modules in layers; each uses only layers below it (checked by `tests/architecture.rs`):
//!
//! 1. Leaves: [`secret`] (redacting wrapper), [`routes`] (the Platform API operation
//!    table), [`metrics`], [`telemetry`], [`shutdown`], [`upstream`] (the HTTP client to
//!    Genesys, its connection pool, and what an answer means: [`upstream::Outcome`]),
//!    [`upkeep`] (a per-thread hook the binary installs for its allocator).
//! 2. [`config`] (YAML → validated [`config::Config`]); [`token`] (one OAuth client's
//!    tokens and their refresher).
//! 3. One step each: [`budget`] (sliding-window budgets and the store trait; no HTTP),
//!    [`cache`] (the response cache: keys, what may be kept, the bounded store, coalescing),
//!    [`pool`] (clients, health, in flight), [`inbound`] (caller checks), [`tls`].
//! 4. [`admission`]: client choice and waiting over [`pool`] and [`budget`].
//! 5. [`generation`]: what one config decides for the request path, built the same way at
//!    start and on reload, and the current one ([`generation::Live`]).
//! 6. [`proxy`] (the request path), [`reload`] (when a new config replaces the generation),
//!    [`server`] (the listener, generic over its handler).
//! 7. [`admin`] (probes, `/metrics`, `/status`, the status page at `/`); then [`app`] (the composition root) and [`sim`] (the Genesys Cloud
//!    simulator, not on the proxy path); [`demo`] (simulator + proxy + load); [`cli`].

pub mod admin;
pub mod admission;
pub mod app;
pub mod budget;
pub mod cache;
pub mod cli;
pub mod config;
pub mod demo;
pub mod generation;
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
pub mod upkeep;
pub mod upstream;
