//! Shared pieces of streamguard's benchmark binaries (`sg-loadgen`, `sg-bench-upstream`).
//!
//! - [`clock`]: CLOCK_MONOTONIC nanoseconds, the timestamp carried in every bench event (the
//!   clock is system-wide, so the upstream's stamp and the load generator's arrival time compare).
//! - [`net`]: client sockets bound to a chosen 127.0.0.x source address.
//! - [`http`]: the minimal HTTP/1.1 response reading the generator needs (head, chunked body)
//!   and the SSE line scanner, and the GET the generators send the bench upstream's control port.
//! - [`procstat`]: CPU time, RSS and open files of a process tree, from /proc.
//! - [`report`]: the results tables (medians over rounds, ratios, the targets).
//! - [`args`]: a tiny `--key value` parser (the binaries take few flags, all numeric or text).

#![deny(unsafe_code)]

pub mod args;
pub mod clock;
pub mod http;
pub mod net;
pub mod procstat;
pub mod report;
