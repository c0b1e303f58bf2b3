//! `fluxgate tail`: each new delivery and outcome as it is stored, until interrupted.

use std::io::IsTerminal as _;

use futures::StreamExt as _;
use serde_json::json;

use crate::connect::NatsArgs;
use crate::error::Error;
use crate::history::{Filter, History, Status};
use crate::parse_receiver;
use crate::render::{self, Format};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    nats: NatsArgs,
    /// Only this receiver (`namespace/name`).
    #[arg(long, value_parser = parse_receiver)]
    receiver: Option<(String, String)>,
}

pub async fn run(args: Args, format: Format) -> Result<(), Error> {
    let filter = Filter {
        receiver: args.receiver,
        ..Default::default()
    };
    let history = History::new(args.nats.connect().await?);
    let (deliveries, outcomes) = history.follow(&filter).await?;
    eprintln!("following deliveries and outcomes; Ctrl-C to stop");
    let mut deliveries = std::pin::pin!(deliveries);
    let mut outcomes = std::pin::pin!(outcomes);
    let colour = std::io::stdout().is_terminal();
    loop {
        tokio::select! {
            // Deliveries first when both streams have something: a delivery's line then comes
            // before its outcomes' whenever both have arrived.
            biased;
            _ = tokio::signal::ctrl_c() => return Ok(()),
            Some(delivery) = deliveries.next() => {
                let delivery = delivery?;
                match format {
                    Format::Table => println!(
                        "{}  {:<12} {}  {}  {} #{}",
                        render::time(delivery.stored_at),
                        "stored",
                        delivery.receiver,
                        render::inert(delivery.event.as_deref().unwrap_or("-")),
                        render::inert(&delivery.id),
                        delivery.seq
                    ),
                    _ => render::line(format, &json!({"kind": "delivery", "delivery": delivery}))?,
                }
            }
            Some(outcome) = outcomes.next() => {
                let outcome = outcome?;
                match format {
                    Format::Table => {
                        let label = outcome.event.label();
                        let shown = if colour && label == "failed" {
                            render::status(Status::Failed, true)
                        } else {
                            label.to_owned()
                        };
                        println!(
                            "{}  {:<12} {}  {} #{} {}",
                            render::outcome_time(&outcome),
                            shown,
                            outcome.receiver,
                            render::inert(&outcome.delivery),
                            outcome.seq,
                            render::event_details(&outcome.event)
                        )
                    }
                    _ => render::line(format, &json!({"kind": "outcome", "outcome": outcome}))?,
                }
            }
            else => return Ok(()),
        }
    }
}
