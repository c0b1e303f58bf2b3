//! `fluxgate replay`: a stored delivery published again on purpose, as a new message on the
//! replay subject that references the original (`Fluxgate-Replay-Of-Seq`) under a message id of
//! its own, so that deduplication keeps it, with its own outcome trail; the original's trail
//! records that, when and by whom it was replayed. Both are written through the shared contract. `--dry-run` resolves the
//! receiver and evaluates its filters as of now with the dispatcher's resolver, and changes
//! nothing.

use std::io::IsTerminal as _;
use std::path::PathBuf;

use async_nats::jetstream::message::StreamMessage;
use chrono::{DateTime, Utc};
use fluxgate_dispatcher::{Inputs, Resolver};
use fluxgate_shared::contract::{self, DeliveryMeta, Event, Outcome, Target};
use fluxgate_shared::receivers::{Catalog, ClusterSettings, list_cluster};
use serde::Serialize;

use crate::connect::{NatsArgs, Streams};
use crate::error::Error;
use crate::history::{Filter, History, Status, message_at};
use crate::render::{self, Format};
use crate::{as_sequence, parse_receiver, parse_time};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    nats: NatsArgs,
    /// Delivery ids, or `#<seq>` stream sequences; without any, the filters choose.
    deliveries: Vec<String>,
    /// Replay the deliveries of this receiver (`namespace/name`).
    #[arg(long, value_parser = parse_receiver)]
    receiver: Option<(String, String)>,
    /// Replay deliveries stored since: a duration ago (`2h`) or an RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    since: Option<DateTime<Utc>>,
    /// Replay deliveries with this status, e.g. `failed`.
    #[arg(long, value_enum)]
    status: Option<Status>,
    /// Show which targets each would be dispatched to now, and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Replays per second at most.
    #[arg(long)]
    rate: Option<f64>,
    /// Do not ask before replaying more than `--confirm-above` deliveries.
    #[arg(short, long)]
    yes: bool,
    /// Ask before replaying more deliveries than this.
    #[arg(long, default_value_t = 10)]
    confirm_above: usize,
    /// Who replays, recorded on the original (default: the OS user); the NATS user of the
    /// credentials is recorded with it.
    #[arg(long)]
    actor: Option<String>,
    /// For `--dry-run`: receivers from this file instead of the cluster.
    #[arg(long, env = "FLUXGATE_RECEIVERS_FILE")]
    receivers_file: Option<PathBuf>,
    /// For `--dry-run`: refuse targets in other namespaces, as the dispatcher does with it.
    #[arg(long, env = "FLUXGATE_NO_CROSS_NAMESPACE_REFS")]
    no_cross_namespace_refs: bool,
}

/// What a replay did.
#[derive(Debug, Serialize)]
struct Replayed {
    delivery: String,
    seq: u64,
    replay_seq: u64,
}

/// What a delivery would be dispatched to now.
#[derive(Serialize)]
struct Plan {
    delivery: String,
    seq: u64,
    targets: Vec<Target>,
    filtered_out: Vec<Target>,
    refused: Vec<String>,
}

pub async fn run(args: Args, format: Format) -> Result<(), Error> {
    let streams = args.nats.connect().await?;
    let history = History::new(streams.clone());
    let seqs = selection(&history, &args).await?;
    if args.dry_run {
        return plan(&streams, format, &args, &seqs).await;
    }
    if seqs.len() > args.confirm_above && !args.yes && !confirm(seqs.len())? {
        return Err(Error::Usage("nothing replayed".into()));
    }
    let actor = recorded_actor(
        args.actor.clone().unwrap_or_else(os_user),
        args.nats.auth.identity(),
    );
    // Each replay's span, when an OTLP endpoint is set: a new trace linked to the original's.
    let tracing = fluxgate_shared::init_exporter_only("fluxgate-cli")?;
    let replayed = replay_all(&streams, &args, seqs, &actor, format).await;
    tracing.shutdown().await;
    replayed
}

/// Replays `seqs` in order, at the requested rate, reporting each.
async fn replay_all(
    streams: &Streams,
    args: &Args,
    seqs: Vec<u64>,
    actor: &str,
    format: Format,
) -> Result<(), Error> {
    let progress = indicatif::ProgressBar::new(seqs.len() as u64);
    let mut pace = args
        .rate
        .filter(|r| *r > 0.0)
        .map(|rate| tokio::time::interval(std::time::Duration::from_secs_f64(1.0 / rate)));
    let mut done = Vec::with_capacity(seqs.len());
    for seq in seqs {
        if let Some(pace) = &mut pace {
            pace.tick().await;
        }
        let replayed = replay(streams, seq, actor).await?;
        progress.inc(1);
        if format == Format::Table {
            progress.suspend(|| {
                println!(
                    "replayed {} (#{}) as #{}",
                    render::inert(&replayed.delivery),
                    replayed.seq,
                    replayed.replay_seq
                )
            });
        }
        done.push(replayed);
    }
    progress.finish_and_clear();
    if format != Format::Table {
        render::structured(format, &done)?;
    }
    Ok(())
}

/// The sequences to replay: those named, else those the filters select, oldest first.
async fn selection(history: &History, args: &Args) -> Result<Vec<u64>, Error> {
    let mut seqs = Vec::new();
    for delivery in &args.deliveries {
        match as_sequence(delivery) {
            Some(seq) => seqs.push(seq),
            None => {
                // The original, not one of its replays.
                let found = history.find(delivery, args.receiver.as_ref()).await?;
                let seq = found.first().copied().ok_or_else(|| {
                    Error::NotFound(format!(
                        "no delivery {delivery:?} in the stream: it never arrived, or it has aged out"
                    ))
                })?;
                seqs.push(seq);
            }
        }
    }
    if args.deliveries.is_empty() {
        if args.receiver.is_none() && args.since.is_none() && args.status.is_none() {
            return Err(Error::Usage(
                "name deliveries, or select them with --receiver, --since or --status".into(),
            ));
        }
        let filter = Filter {
            receiver: args.receiver.clone(),
            status: args.status,
            since: args.since,
            limit: usize::MAX,
            ..Default::default()
        };
        seqs = history
            .list(&filter)
            .await?
            .iter()
            .map(|s| s.delivery.seq)
            .collect();
        seqs.reverse();
    }
    Ok(seqs)
}

/// The stored message `seq` and its metadata.
async fn original(streams: &Streams, seq: u64) -> Result<(DeliveryMeta, StreamMessage), Error> {
    let deliveries = streams.get(contract::DELIVERIES_STREAM).await?;
    let message = message_at(&deliveries, seq)
        .await
        .map_err(|e| Error::NotFound(format!("no delivery #{seq}: {e}")))?;
    let meta = DeliveryMeta::read(&message.subject, Some(&message.headers))?;
    Ok((meta, message))
}

/// Publishes delivery `seq` again and records that on the original.
async fn replay(streams: &Streams, seq: u64, actor: &str) -> Result<Replayed, Error> {
    let (original, message) = original(streams, seq).await?;
    let span = tracing::info_span!(
        parent: None,
        "replay",
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "send",
        fluxgate.delivery_id = %original.id,
        fluxgate.replay_of = seq,
        fluxgate.actor = actor,
        fluxgate.sequence = tracing::field::Empty,
    );
    if let Some(traceparent) = &original.traceparent {
        fluxgate_shared::link_to(&span, traceparent);
    }
    // A trace of its own, which the dispatcher continues: a replay is a new event.
    let traceparent =
        fluxgate_shared::traceparent_of(&span).unwrap_or_else(fluxgate_shared::new_traceparent);
    let again = DeliveryMeta {
        received_at: Some(Utc::now()),
        replay_of: Some(seq),
        replay_actor: Some(actor.to_owned()),
        traceparent: Some(traceparent),
        ..original.clone()
    };
    // The kept request headers go along in the metadata (read from either form).
    let mut headers = again.to_headers();
    // A message id of its own, so that the stream's duplicate window keeps it too.
    headers.insert(
        contract::header::NATS_MSG_ID,
        format!("replay/{}", uuid::Uuid::now_v7()),
    );
    let ack = streams
        .jetstream
        .publish_with_headers(again.subject(), headers, message.payload)
        .await
        .map_err(Error::nats)?
        .await
        .map_err(Error::nats)?;
    span.record("fluxgate.sequence", ack.sequence);
    let replayed = Event::Replayed {
        replay_seq: ack.sequence,
        actor: actor.to_owned(),
    };
    Outcome::now(&original, seq, replayed)
        .publish(&streams.jetstream)
        .await?;
    Ok(Replayed {
        delivery: original.id,
        seq,
        replay_seq: ack.sequence,
    })
}

/// Asks on the terminal; anything but yes is no, and without a terminal there is no asking.
fn confirm(count: usize) -> Result<bool, Error> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::Usage(format!(
            "this would replay {count} deliveries; pass --yes to do so without a terminal to ask on"
        )));
    }
    eprint!("Replay {count} deliveries? [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// `$USER`, else the name of the account the process runs as.
/// The actor as recorded: who the operator says they are, and the NATS user whose credentials
/// published the replay (which NATS, not the operator, vouches for).
fn recorded_actor(actor: String, nats_user: Option<String>) -> String {
    match nats_user {
        Some(user) => format!("{actor} (NATS user {user})"),
        None => actor,
    }
}

fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .ok()
        .filter(|user| !user.is_empty())
        .or_else(|| {
            let status = std::fs::read_to_string("/proc/self/status").ok()?;
            let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
            account_name(&status, &passwd)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The name `/etc/passwd` gives the real uid of `/proc/self/status`.
fn account_name(status: &str, passwd: &str) -> Option<String> {
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 2 && fields[2] == uid).then(|| fields[0].to_owned())
    })
}

/// Prints what each delivery would be dispatched to now.
async fn plan(streams: &Streams, format: Format, args: &Args, seqs: &[u64]) -> Result<(), Error> {
    let client = kube::Client::try_default().await?;
    let catalog = match &args.receivers_file {
        Some(path) => Catalog::load_file(path)?,
        None => {
            let settings = ClusterSettings {
                namespace: None,
                read_secrets: false,
                secrets_selector: None,
            };
            list_cluster(client.clone(), &settings).await?.0
        }
    };
    let resolver = Resolver::new(client, args.no_cross_namespace_refs);
    let mut plans = Vec::with_capacity(seqs.len());
    for &seq in seqs {
        let (meta, message) = original(streams, seq).await?;
        let receiver = catalog
            .by_name(&meta.namespace, &meta.receiver)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "receiver {}/{} is not in the catalog (--receivers-file or the cluster)",
                    meta.namespace, meta.receiver
                ))
            })?;
        let inputs = std::sync::Arc::new(
            Inputs::of(&streams.jetstream, receiver, &meta, &message.payload).await?,
        );
        let resolved = resolver
            .resolve(receiver, &inputs)
            .await
            .map_err(fluxgate_dispatcher::Error::from)?;
        plans.push(Plan {
            delivery: meta.id,
            seq,
            targets: resolved.targets,
            filtered_out: resolved.filtered_out,
            refused: resolved
                .refused
                .into_iter()
                .map(|(target, reason)| match target {
                    Some(t) => format!("{t}: {reason}"),
                    None => reason,
                })
                .collect(),
        });
    }
    if format != Format::Table {
        return render::structured(format, &plans);
    }
    for p in &plans {
        println!(
            "would replay {} (#{}): nothing is published (--dry-run)",
            render::inert(&p.delivery),
            p.seq
        );
        for t in &p.targets {
            println!("  would annotate  {t}");
        }
        for t in &p.filtered_out {
            println!("  filtered out    {t}");
        }
        for r in &p.refused {
            println!("  would fail      {}", render::inert(r));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_is_named_by_the_real_uid() {
        let status = "Name:\tfluxgate\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\n";
        let passwd = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(account_name(status, passwd).as_deref(), Some("alice"));
        assert_eq!(account_name(status, "root:x:0:0::/:/bin/sh\n"), None);
    }
}
