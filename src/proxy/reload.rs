//! Hot reload: read the configuration again and put it in force without dropping anything.
//!
//! A reload (SIGHUP, `POST /reload`, or a change `server.watch_config` noticed) reads
//! `proxy.toml` and every file it names, validates them exactly as `check` does, builds a whole
//! new [`Policy`] (CORS, keys, routes, limits, stream settings, the TLS certificate) and swaps
//! it in with one atomic store: each request sees the old policy or the new one, never a mix.
//! Anything that fails leaves the running policy in place.
//!
//! What a reload does not touch is the process-lifetime [`State`]: per-user stream counts and
//! rate state carry on, so a reload never lets a user open more streams. Streams already open
//! keep the policy they started under, with one exception: a stream whose token was verified
//! with a key the new policy no longer trusts (a rotated secret, a key gone from the JWKS) ends
//! within `server.drain_window`, spread out like a drain, so a revoked key stops working
//! everywhere without a reconnect storm.
//!
//! A few keys shape what the process built at start-up (listeners, threads, the log format, the
//! limit store); a reload that changes one is refused as a whole with a message naming them.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::{Config, ConfigError, ConfigSource};
use crate::telemetry::{self, ReloadResult};

use super::state::{Policy, SetupError, State};

/// What asked for a reload, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Signal,
    Admin,
    Watch,
}

impl Trigger {
    fn label(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::Admin => "POST /reload",
            Trigger::Watch => "server.watch_config",
        }
    }
}

/// Why a reload left the running configuration in place.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "{} only take effect on a restart: {}; restart the process to apply them, or put the \
         running values back to reload the rest",
        if .0.len() == 1 { "this key changed, and it can" } else { "these keys changed, and they can" },
        .0.join(", ")
    )]
    RestartRequired(Vec<&'static str>),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("{0}")]
    LogLevel(String),
    #[error("the reload stopped unexpectedly; the running configuration stays")]
    Interrupted,
}

impl ReloadError {
    fn result(&self) -> ReloadResult {
        match self {
            ReloadError::RestartRequired(_) => ReloadResult::RestartRequired,
            _ => ReloadResult::Error,
        }
    }
}

/// A reload that took effect.
#[derive(Debug)]
pub struct Reloaded {
    /// The fingerprint of the configuration now in force, and of the one before.
    pub fingerprint: String,
    pub previous: String,
    /// The sections whose settings differ (file contents such as a renewed certificate show
    /// only in the fingerprint).
    pub changed: Vec<&'static str>,
}

/// Runs reloads for one process, one at a time.
pub struct Reloader {
    state: Arc<State>,
    source: ConfigSource,
    /// Held for a whole reload, so two triggers at once cannot interleave their swaps. It
    /// guards the fingerprint of the files the last reload refused, so `watch_config` does not
    /// retry (and log) the same broken files at every poll.
    last_refused: Mutex<Option<String>>,
}

impl Reloader {
    pub fn new(state: Arc<State>, source: ConfigSource) -> Reloader {
        Reloader {
            state,
            source,
            last_refused: Mutex::new(None),
        }
    }

    /// The process state reloads install into.
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Reloads from the files as they are now. Reading the files blocks, so it runs off the
    /// async workers.
    pub async fn reload(self: &Arc<Self>, trigger: Trigger) -> Result<Reloaded, ReloadError> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || this.reload_blocking(trigger))
            .await
            .unwrap_or(Err(ReloadError::Interrupted))
    }

    /// For `server.watch_config`: reloads when the files on disk differ from the configuration
    /// in force and from the last files a reload refused. `None` when nothing changed.
    pub async fn reload_if_changed(self: &Arc<Self>) -> Option<Result<Reloaded, ReloadError>> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let now = {
                let refused = this.lock();
                let policy = this.state.policy();
                let now = this.source.fingerprint_now(&policy.config.files)?;
                if now == policy.config.fingerprint || refused.as_deref() == Some(now.as_str()) {
                    return None;
                }
                now
            };
            tracing::debug!(files = %now, "watched configuration changed");
            Some(this.reload_blocking(Trigger::Watch))
        })
        .await
        .unwrap_or(Some(Err(ReloadError::Interrupted)))
    }

    fn lock(&self) -> MutexGuard<'_, Option<String>> {
        // The guarded value is a cache: a panic elsewhere leaves nothing inconsistent.
        self.last_refused
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn reload_blocking(&self, trigger: Trigger) -> Result<Reloaded, ReloadError> {
        let mut last_refused = self.lock();
        let old = self.state.policy();
        let outcome = self.swap(&old);
        let ops = &self.state.metrics.ops;
        match &outcome {
            Ok(done) => {
                *last_refused = None;
                ops.reloaded(ReloadResult::Ok);
                ops.config_loaded(&done.fingerprint);
                tracing::info!(
                    trigger = trigger.label(),
                    config = %done.fingerprint,
                    previous = %done.previous,
                    changed = %done.changed.join(","),
                    "configuration reloaded"
                );
            }
            Err(e) => {
                *last_refused = self.source.fingerprint_now(&old.config.files);
                ops.reloaded(e.result());
                tracing::error!(
                    trigger = trigger.label(),
                    config = %old.config.fingerprint,
                    error = %e,
                    "reload refused; the running configuration stays"
                );
            }
        }
        outcome
    }

    /// Loads, checks and installs the new policy; on any error nothing is installed.
    fn swap(&self, old: &Policy) -> Result<Reloaded, ReloadError> {
        let config = self.source.load()?;
        let restart = restart_only(&old.config, &config);
        if !restart.is_empty() {
            return Err(ReloadError::RestartRequired(restart));
        }
        let changed = changed_sections(&old.config, &config);
        let policy = Policy::new(config)?;
        telemetry::set_level(&policy.config.log.level).map_err(ReloadError::LogLevel)?;
        let trusted = policy.trusted_keys();
        let window = policy.config.server.drain_window;
        let fingerprint = policy.config.fingerprint.clone();
        self.state.install(policy);
        // After the install: a stream opened from now on already verified against the new keys.
        self.state.lifecycle.trust(trusted, window);
        Ok(Reloaded {
            fingerprint,
            previous: old.config.fingerprint.clone(),
            changed,
        })
    }
}

/// The keys that differ between `old` and `new` but that only a restart applies: the
/// listeners, the worker threads, the log format, and the process-wide stores.
fn restart_only(old: &Config, new: &Config) -> Vec<&'static str> {
    [
        ("listen.address", old.listen.address != new.listen.address),
        (
            "listen.tls_cert_file (TLS on or off)",
            old.listen.tls.is_some() != new.listen.tls.is_some(),
        ),
        (
            "listen.reuse_port",
            old.listen.reuse_port != new.listen.reuse_port,
        ),
        (
            "http2.enabled (ALPN h2 on the TLS listener)",
            old.http2.enabled != new.http2.enabled,
        ),
        ("admin.address", old.admin.address != new.admin.address),
        ("server.threads", old.server.threads != new.server.threads),
        ("log.format", old.log.format != new.log.format),
        ("limits.store", old.store != new.store),
        (
            "sse.slow_buffer_total",
            old.sse.slow_buffer_total != new.sse.slow_buffer_total,
        ),
    ]
    .into_iter()
    .filter_map(|(key, differs)| differs.then_some(key))
    .collect()
}

/// The sections whose settings differ. Sections are compared through their debug form, which
/// covers every field; key material is compared apart, as its debug form is redacted.
fn changed_sections(old: &Config, new: &Config) -> Vec<&'static str> {
    fn differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    [
        ("listen", differs(&old.listen, &new.listen)),
        ("admin", differs(&old.admin, &new.admin)),
        ("upstream", differs(&old.upstream, &new.upstream)),
        ("server", differs(&old.server, &new.server)),
        ("cors", differs(&old.cors, &new.cors)),
        (
            "auth",
            differs(&old.auth, &new.auth) || old.auth.key != new.auth.key,
        ),
        ("log", differs(&old.log, &new.log)),
        ("sse", differs(&old.sse, &new.sse)),
        ("websocket", differs(&old.websocket, &new.websocket)),
        ("limits", differs(&old.limits, &new.limits)),
        ("http2", differs(&old.http2, &new.http2)),
        ("route", differs(&old.routes, &new.routes)),
    ]
    .into_iter()
    .filter_map(|(section, differs)| differs.then_some(section))
    .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!(
            "[upstream]\naddress = \"127.0.0.1:3000\"\n[auth]\nsecret = \"0123456789abcdef0123456789abcdef\"\n{extra}"
        );
        crate::config::parse_str(&text, Path::new("."), &HashMap::new()).expect("valid")
    }

    #[test]
    fn restart_only_keys_are_named_and_the_rest_reloads() {
        let base = config("");
        assert!(restart_only(
            &base,
            &config("[cors]\nallowed_origins = [\"https://a.example\"]")
        )
        .is_empty());
        assert!(restart_only(&base, &config("[server]\ndrain_window = \"3s\"")).is_empty());
        assert_eq!(
            restart_only(
                &base,
                &config("[server]\nthreads = 7\n[admin]\naddress = \"127.0.0.1:9999\"")
            ),
            vec!["admin.address", "server.threads"]
        );
        assert_eq!(
            restart_only(&base, &config("[log]\nformat = \"text\"")),
            vec!["log.format"]
        );
        let shown = ReloadError::RestartRequired(vec!["listen.address"]).to_string();
        assert!(
            shown.contains("listen.address") && shown.contains("restart"),
            "{shown}"
        );
    }

    #[test]
    fn changed_sections_see_a_rotated_secret() {
        let base = config("");
        assert!(changed_sections(&base, &config("")).is_empty());
        let rotated = crate::config::parse_str(
            "[upstream]\naddress = \"127.0.0.1:3000\"\n[auth]\nsecret = \"fedcba9876543210fedcba9876543210\"\n",
            Path::new("."),
            &HashMap::new(),
        )
        .expect("valid");
        assert_eq!(changed_sections(&base, &rotated), vec!["auth"]);
        assert_eq!(
            changed_sections(
                &base,
                &config("[sse]\nheartbeat = \"7s\"\n[[route]]\npath = \"/x\"")
            ),
            vec!["sse", "route"]
        );
    }
}
