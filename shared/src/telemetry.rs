//! Logging set-up shared by the binaries: structured logs to stderr, filtered by `RUST_LOG`.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    #[default]
    Json,
    /// Human-readable, for a terminal.
    Text,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Self::Json),
            "text" => Ok(Self::Text),
            other => Err(format!(
                "unknown log format {other:?} (expected json or text)"
            )),
        }
    }
}

/// Installs the global subscriber; `RUST_LOG` overrides the default: `info`, and the NATS
/// client's own lines from `warn` (its connection events are logged, with the server and the
/// cause, by [`crate::nats_connect_options`]).
pub fn init_telemetry(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: not in `docker compose logs` or a log collector.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second init (in-process tests) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
