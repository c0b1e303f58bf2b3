//! The history benchmark: the release `fluxgate-ingest` provisions its streams, then a million
//! deliveries are stored as it stores them, each with the index entry the dispatcher adds, and the
//! `fluxgate` CLI's look-ups are timed over them: by id through the index, a missing id, the
//! newest page, one receiver's, and a `--since` window; then by id once more without the index.

use std::time::Instant;

use anyhow::Context as _;
use async_nats::jetstream;
use fluxgate_shared::contract::{self, DeliveryMeta, IndexEntry};
use fluxgate_tests::ingest::Ingest;
use fluxgate_tests::nats::NatsServer;
use fluxgate_tests::webhook::{receiver_manifest, secret_manifest, sender_delivery};
use futures::StreamExt as _;

#[derive(clap::Args)]
pub struct Args {
    /// Deliveries stored.
    #[arg(long, default_value_t = 1_000_000)]
    deliveries: usize,
    /// Receivers they are spread over.
    #[arg(long, default_value_t = 100)]
    receivers: usize,
}

const NS: &str = "bench";

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.receivers > 0, "need receivers");
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir()?;
    let mut manifests = vec![secret_manifest("token", NS, "bench-token")];
    for r in 0..args.receivers {
        manifests.push(receiver_manifest(
            &format!("hook-{r}"),
            NS,
            "generic",
            "token",
            "",
        ));
    }
    let file = dir.path().join("receivers.yaml");
    std::fs::write(&file, manifests.join("---\n"))?;
    // Ingest makes the streams (deliveries, index) as a deployment has them; the deliveries
    // are then stored directly, as fast as the server takes them.
    let _ingest = Ingest::start(&nats.url(), &file, &[]).await;
    let client = nats.client().await;
    let jetstream = jetstream::new(client.clone());
    let nats_pid = nats.pid().context("nats-server is not running")?;
    let (rss_before, _) = crate::ingest::memory_kib(nats_pid)?;
    let started = Instant::now();
    let mut pending = futures::stream::FuturesUnordered::new();
    for i in 0..args.deliveries {
        let meta = sender_delivery(
            &format!("delivery-{i}"),
            NS,
            &format!("hook-{}", i % args.receivers),
        );
        // With its message id, as ingest stores it: the stream remembers every id of its
        // duplicate window.
        let mut headers = meta.to_headers();
        headers.insert(contract::header::NATS_MSG_ID, meta.key());
        let ack = jetstream
            .publish_with_headers(meta.subject(), headers, "{}".into())
            .await?;
        pending.push(async move { (meta, ack.await) });
        if pending.len() >= 512
            && let Some((meta, ack)) = pending.next().await
        {
            index(&client, meta, ack?.sequence).await?;
        }
    }
    while let Some((meta, ack)) = pending.next().await {
        index(&client, meta, ack?.sequence).await?;
    }
    client.flush().await?;
    let stored = started.elapsed();
    println!(
        "fluxgate-load history: {} deliveries over {} receivers stored in {:.1} s ({:.0}/s, with their index entries)",
        args.deliveries,
        args.receivers,
        stored.as_secs_f64(),
        args.deliveries as f64 / stored.as_secs_f64()
    );
    let (rss_after, _) = crate::ingest::memory_kib(nats_pid)?;
    println!(
        "nats-server RSS: {:.0} MiB before, {:.0} MiB after ({:.0} bytes per delivery, its id in the duplicate window included)",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        (rss_after.saturating_sub(rss_before) * 1024) as f64 / args.deliveries as f64
    );

    let middle = format!("delivery-{}", args.deliveries / 2);
    let newest = format!("delivery-{}", args.deliveries - 1);
    let queries: [(&str, Vec<&str>, bool); 6] = [
        (
            "deliveries show <id> (middle)",
            vec!["deliveries", "show", middle.as_str()],
            true,
        ),
        (
            "deliveries show <id> (newest)",
            vec!["deliveries", "show", newest.as_str()],
            true,
        ),
        (
            "deliveries show <id> (no such id)",
            vec!["deliveries", "show", "nope"],
            false,
        ),
        (
            "deliveries list (newest 50)",
            vec!["deliveries", "list"],
            true,
        ),
        (
            "deliveries list --receiver bench/hook-7",
            vec!["deliveries", "list", "--receiver", "bench/hook-7"],
            true,
        ),
        (
            "deliveries list --since 1h",
            vec!["deliveries", "list", "--since", "1h"],
            true,
        ),
    ];
    println!("fluxgate CLI (milliseconds, whole command, best of 3):");
    for (name, args, succeeds) in queries {
        let mut best = f64::MAX;
        for _ in 0..3 {
            let started = Instant::now();
            let output = std::process::Command::new(fluxgate_tests::workspace_binary("fluxgate"))
                .env("NATS_URL", nats.url())
                .args(["-o", "json"])
                .args(&args)
                .output()?;
            best = best.min(started.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(
                output.status.success() == succeeds,
                "fluxgate {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        println!("  {name:<44} {best:>8.1}");
    }
    // Without the index, as before it: every delivery's headers are read.
    jetstream.delete_stream(contract::INDEX_STREAM).await?;
    let started = Instant::now();
    let output = std::process::Command::new(fluxgate_tests::workspace_binary("fluxgate"))
        .env("NATS_URL", nats.url())
        .args(["-o", "json", "deliveries", "show", middle.as_str()])
        .output()?;
    anyhow::ensure!(output.status.success(), "show without the index");
    println!(
        "  {:<44} {:>8.1}",
        "deliveries show <id> (middle), no index",
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

/// The index entry ingest writes after a delivery's ack.
async fn index(client: &async_nats::Client, meta: DeliveryMeta, seq: u64) -> anyhow::Result<()> {
    let entry = IndexEntry::of(seq, &meta);
    let subject = contract::index_subject(&entry.id);
    client
        .publish(subject, serde_json::to_vec(&entry)?.into())
        .await?;
    Ok(())
}
