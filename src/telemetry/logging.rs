//! The `tracing` subscriber: JSON or text lines on stdout, Pingora's `log` records bridged in.
//! The level filter sits behind a reload handle, so a config reload can change `log.level`
//! (the format is fixed for the life of the process).

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

use crate::config::{LogConfig, LogFormat};

/// Filter directives appended to `log.level`.
const PINGORA_LOG_CAP: &str = "pingora_proxy=info,pingora_core=info,pingora_http=info";

/// Swaps the level filter of the installed subscriber; set once by [`init_logging`].
static LEVEL: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// `log.level` as a filter. Pingora's debug output prints whole request heads, credentials
/// included: whatever level the operator picks, Pingora's own crates stay at info so no token
/// reaches a log line.
fn filter(level: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(format!("{level},{PINGORA_LOG_CAP}")).map_err(|e| format!("log.level: {e}"))
}

/// Installs the global `tracing` subscriber (JSON or text on stdout). Pingora's own `log`
/// records are bridged in so operators get one stream in one format.
pub fn init_logging(cfg: &LogConfig) -> Result<(), String> {
    let (level, handle) = reload::Layer::new(filter(&cfg.level)?);
    let json = (cfg.format == LogFormat::Json).then(|| {
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stdout)
    });
    let text = (cfg.format == LogFormat::Text)
        .then(|| fmt::layer().with_ansi(false).with_writer(std::io::stdout));
    // A second init (tests, `demo` after `check`) keeps the first subscriber: not an error.
    if Registry::default()
        .with(level)
        .with(json)
        .with(text)
        .try_init()
        .is_ok()
    {
        let _ = LEVEL.set(handle);
    }
    Ok(())
}

/// Puts `level` (a `log.level` value) in force. Without a subscriber installed by
/// [`init_logging`] there is nothing to change.
pub fn set_level(level: &str) -> Result<(), String> {
    let filter = filter(level)?;
    match LEVEL.get() {
        Some(handle) => handle.reload(filter).map_err(|e| format!("log.level: {e}")),
        None => Ok(()),
    }
}
