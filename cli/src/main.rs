//! `fluxgate`: the command line over fluxgate's streams -- what arrived and what became of it,
//! the receivers and their webhook URLs, replays, and a live tail.

mod connect;
mod deliveries;
mod error;
mod history;
mod receivers;
mod render;
mod replay;
mod tail;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};

use crate::render::Format;

#[derive(Debug, Parser)]
#[command(
    name = "fluxgate",
    version,
    about = "See and replay the webhooks fluxgate stored",
    after_help = "Reads NATS_URL for the commands that use NATS, and KUBECONFIG (or the in-cluster \
                  account) for those that read Receivers from the cluster."
)]
struct Cli {
    /// How to print results.
    #[arg(short, long, value_enum, default_value = "table", global = true)]
    output: Format,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// What arrived and what became of it.
    #[command(subcommand)]
    Deliveries(deliveries::Command),
    /// The receivers and their webhook URLs.
    #[command(subcommand)]
    Receivers(receivers::Command),
    /// Publish deliveries again, on purpose: by id, or every one matching the filters.
    Replay(replay::Args),
    /// Follow deliveries and their outcomes live, as they happen.
    Tail(tail::Args),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Deliveries(command) => deliveries::run(command, cli.output).await,
        Command::Receivers(command) => receivers::run(command, cli.output).await,
        Command::Replay(args) => replay::run(args, cli.output).await,
        Command::Tail(args) => tail::run(args, cli.output).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // One line, whatever RUST_BACKTRACE says: these are the user's to fix, not bugs.
        Err(error) => {
            eprintln!("error: {}", error.explained());
            std::process::ExitCode::FAILURE
        }
    }
}

/// `namespace/name`.
fn parse_receiver(value: &str) -> Result<(String, String), String> {
    match value.split_once('/') {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => {
            Ok((namespace.to_owned(), name.to_owned()))
        }
        _ => Err(format!("{value:?} is not namespace/name")),
    }
}

/// `2h` (that long ago) or an RFC 3339 time.
fn parse_time(value: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(ago) = humantime::parse_duration(value) {
        let ago = chrono::Duration::from_std(ago).map_err(|e| e.to_string())?;
        return Ok(Utc::now() - ago);
    }
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| format!("{value:?} is neither a duration (2h) nor an RFC 3339 time"))
}

/// `#12` or `12`: a stream sequence rather than a delivery id.
fn as_sequence(delivery: &str) -> Option<u64> {
    delivery.trim_start_matches('#').parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_durations_ago_or_rfc3339() {
        let two_hours = parse_time("2h").expect("duration");
        let ago = Utc::now() - two_hours;
        assert!((ago.num_seconds() - 7200).abs() < 5, "{ago}");
        assert_eq!(
            parse_time("2026-11-24T10:00:00Z")
                .expect("time")
                .to_rfc3339(),
            "2026-11-24T10:00:00+00:00"
        );
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn receivers_are_namespace_slash_name() {
        assert_eq!(parse_receiver("ns/r"), Ok(("ns".into(), "r".into())));
        assert!(parse_receiver("r").is_err() && parse_receiver("/r").is_err());
    }

    #[test]
    fn every_flag_has_a_description() {
        use clap::CommandFactory as _;
        assert_eq!(
            fluxgate_shared::undescribed_flags(&Cli::command()),
            Vec::<String>::new()
        );
    }
}
