//! Options both services take: where NATS is, where the receivers are, how to log.

use std::path::PathBuf;
use std::time::Duration;

use crate::telemetry::LogFormat;

/// Flattened into each binary's own configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonConfig {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    #[command(flatten)]
    pub nats_auth: crate::NatsAuth,

    /// Multi-document YAML file of Flux `Receiver` and `Secret` manifests; reloaded on change.
    /// Without it, Receivers are watched in the cluster.
    #[arg(long, env = "FLUXGATE_RECEIVERS_FILE")]
    pub receivers_file: Option<PathBuf>,

    /// Watch Receivers in this namespace only (without a receivers file); default: all.
    #[arg(long, env = "FLUXGATE_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// How often the receivers file is checked for changes.
    #[arg(long, env = "FLUXGATE_RELOAD_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub reload_interval: Duration,

    /// `json` or `text`.
    #[arg(long, env = "FLUXGATE_LOG_FORMAT", default_value = "json")]
    pub log_format: LogFormat,
}

/// The end of each service's `--help`: what it reads besides its flags.
pub const SERVICE_HELP: &str = "Logging: RUST_LOG (e.g. info,fluxgate=debug). Kubernetes: \
    KUBECONFIG, else the in-cluster service account. Every flag also reads the environment \
    variable shown.";

/// Flags and arguments of `command` (and its subcommands) without a description, as
/// `path --flag`: every one should say what it is for in `--help`.
pub fn undescribed_flags(command: &clap::Command) -> Vec<String> {
    let mut missing = Vec::new();
    let mut pending = vec![(command.get_name().to_owned(), command)];
    while let Some((path, command)) = pending.pop() {
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if id != "help" && id != "version" && arg.get_help().is_none() {
                missing.push(format!("{path} --{id}"));
            }
        }
        for sub in command.get_subcommands() {
            pending.push((format!("{path} {}", sub.get_name()), sub));
        }
    }
    missing
}
