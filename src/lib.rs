//! streamguard: a sidecar reverse proxy on Pingora that hardens an existing Server-Sent Events
//! and WebSocket app without touching its code.
//!
//! - [`config`]: the TOML schema, env substitution and validation into a ready [`config::Config`].
//! - [`policy`]: pure decisions (CORS, JWT auth, routes, limits) with no I/O.
//! - [`fleet`]: the limit store shared by every replica through Redis.
//! - [`relay`]: the SSE and WebSocket relay loops and their incremental parsers.
//! - [`proxy`]: the one `ProxyHttp` implementation wiring policies to relays.
//! - [`admin`], [`telemetry`]: metrics, health probes, access and security logs.
//! - [`server`], [`cli`]: process assembly and the command line.
//! - [`demo`]: the bundled demo app, also the integration tests' upstream.

pub mod admin;
pub mod cli;
pub mod config;
pub mod demo;
pub mod fleet;
pub mod policy;
pub mod proxy;
pub mod relay;
pub mod server;
pub mod telemetry;
pub mod token;
