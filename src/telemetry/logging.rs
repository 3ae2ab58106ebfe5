//! The `tracing` subscriber: JSON or text lines on stdout, Pingora's `log` records bridged in.

use crate::config::{LogConfig, LogFormat};

/// Filter directives appended to `log.level`.
const PINGORA_LOG_CAP: &str = "pingora_proxy=info,pingora_core=info,pingora_http=info";

/// Installs the global `tracing` subscriber (JSON or text on stdout). Pingora's own `log`
/// records are bridged in so operators get one stream in one format.
pub fn init_logging(cfg: &LogConfig) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    // Pingora's debug output prints whole request heads, credentials included: whatever level
    // the operator picks, Pingora's own crates stay at info so no token reaches a log line.
    let directives = format!("{},{PINGORA_LOG_CAP}", cfg.level);
    let filter = EnvFilter::try_new(directives).map_err(|e| format!("log.level: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let result = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    // A second init (tests, `demo` after `check`) keeps the first subscriber: not an error.
    let _ = result;
    Ok(())
}
