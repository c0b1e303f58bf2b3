//! The soak benchmark: `fluxgate_tests::soak` for as long as asked, its report printed; exits
//! with an error when a delivery answered 2xx did not reach a terminal outcome.

use std::time::Duration;

use fluxgate_tests::soak::{self, Options};

#[derive(clap::Args)]
pub struct Args {
    /// How long the load runs (the NATS restart comes at a third, the dispatcher's SIGKILL at
    /// half of it).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Senders of the request mix, one request at a time each.
    #[arg(long, default_value_t = 4)]
    senders: usize,
    /// Each sender's pause between two requests.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    pace: Duration,
    /// Slow clients, each holding a connection until ingest cuts it off.
    #[arg(long, default_value_t = 8)]
    slow_clients: usize,
    /// Receivers, each with its own GitRepository.
    #[arg(long, default_value_t = 50)]
    receivers: usize,
    /// How often memory and open files are sampled.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    sample_every: Duration,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let report = soak::run(Options {
        duration: args.duration,
        senders: args.senders,
        pace: args.pace,
        slow_clients: args.slow_clients,
        receivers: args.receivers,
        sample_every: args.sample_every,
    })
    .await;
    println!("fluxgate-load {report}");
    anyhow::ensure!(
        report.nothing_lost(),
        "deliveries answered 2xx without a terminal outcome: {:?}",
        report.lost
    );
    Ok(())
}
