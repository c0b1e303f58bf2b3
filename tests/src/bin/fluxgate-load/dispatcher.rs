//! The dispatcher benchmark. Stores a backlog of deliveries (with sender ids, as ingest would)
//! spread over receivers each targeting its own GitRepository in the Kubernetes API stand-in
//! (by label, or by name), starts the release `fluxgate-dispatcher`, and measures how fast it
//! drains the backlog into patches and what it asked the API server, against what Flux's
//! receiver would; then drains the same backlog with a bare JetStream consumer that only acks,
//! and times the `fluxgate` CLI's history queries over the deliveries and outcomes it left.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use fluxgate_shared::contract;
use fluxgate_tests::apiserver::ApiServer;
use fluxgate_tests::dispatcher::Dispatcher;
use fluxgate_tests::nats::NatsServer;
use fluxgate_tests::webhook::secret_manifest;
use futures::StreamExt as _;

#[derive(clap::Args)]
pub struct Args {
    /// Deliveries in the backlog.
    #[arg(long, default_value_t = 100_000)]
    deliveries: usize,
    /// Targets (one receiver and one GitRepository each) they are spread over.
    #[arg(long, default_value_t = 1_000)]
    targets: usize,
    /// The dispatcher's coalescing window.
    #[arg(long, default_value = "1s")]
    coalesce_window: String,
    /// The dispatcher's `--max-ack-pending` (deliveries in flight); its default when not given.
    #[arg(long)]
    max_ack_pending: Option<u32>,
    /// How each receiver names its GitRepository: `label` (`name: "*"` with `matchLabels`,
    /// which costs Flux a LIST per webhook) or `name`.
    #[arg(long, default_value = "label")]
    select: Select,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Select {
    Label,
    Name,
}

const NS: &str = "bench";

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.targets > 0 && args.deliveries >= args.targets,
        "need deliveries >= targets > 0"
    );
    let nats = NatsServer::start().await;
    let cluster = ApiServer::start_local().await;
    let dir = tempfile::tempdir()?;
    let mut manifests = vec![secret_manifest("token", NS, "bench-token")];
    for t in 0..args.targets {
        cluster.apply(serde_json::json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": {"name": format!("repo-{t}"), "namespace": NS, "labels": {"hook": format!("hook-{t}")}},
            "spec": {"url": "https://example.org/repo", "interval": "10m"},
        }));
        let target = match args.select {
            Select::Label => format!("name: \"*\"\n      matchLabels:\n        hook: hook-{t}"),
            Select::Name => format!("name: repo-{t}"),
        };
        manifests.push(format!(
            "apiVersion: notification.toolkit.fluxcd.io/v1\nkind: Receiver\nmetadata:\n  name: hook-{t}\n  namespace: {NS}\nspec:\n  type: generic\n  secretRef:\n    name: token\n  resources:\n    - kind: GitRepository\n      {target}\n"
        ));
    }
    let receivers = dir.path().join("receivers.yaml");
    std::fs::write(&receivers, manifests.join("---\n"))?;
    let kubeconfig = cluster.write_kubeconfig(dir.path())?;

    let client = nats.client().await;
    let jetstream = jetstream::new(client.clone());
    let stream = jetstream
        .get_or_create_stream(jetstream::stream::Config {
            name: contract::DELIVERIES_STREAM.into(),
            subjects: vec![format!("{}.>", contract::DELIVERIES_SUBJECT_PREFIX)],
            storage: jetstream::stream::StorageType::File,
            // As ingest makes it.
            allow_direct: true,
            ..Default::default()
        })
        .await?;
    // The delivery index, as ingest makes it, for the dispatcher's entries to be stored.
    jetstream
        .get_or_create_stream(jetstream::stream::Config {
            name: contract::INDEX_STREAM.into(),
            subjects: vec![format!("{}.*", contract::INDEX_SUBJECT_PREFIX)],
            storage: jetstream::stream::StorageType::File,
            allow_direct: true,
            ..Default::default()
        })
        .await?;
    store_backlog(&jetstream, &args).await?;
    println!(
        "fluxgate-load dispatcher: {} deliveries over {} targets, nats-server on 127.0.0.1",
        args.deliveries, args.targets
    );

    let mut dispatcher_args = vec![
        "--leader-election".to_owned(),
        "false".into(),
        "--coalesce-window".into(),
        args.coalesce_window.clone(),
        // The drain is measured; confirming (one watch per patched target) is not.
        "--confirm-timeout".into(),
        "0".into(),
    ];
    if let Some(max) = args.max_ack_pending {
        dispatcher_args.extend(["--max-ack-pending".into(), max.to_string()]);
    }
    let dispatcher_args: Vec<&str> = dispatcher_args.iter().map(String::as_str).collect();
    let started = Instant::now();
    // Transparent huge pages off, as the image runs it (see the ingest section).
    let mut dispatcher = Dispatcher::start_with(
        &nats.url(),
        Some(&receivers),
        &kubeconfig,
        &dispatcher_args,
        &[("MIMALLOC_ALLOW_THP", "0")],
    )
    .await;
    let dispatcher_cpu_before = crate::ingest::cpu_seconds(dispatcher.service.pid());
    let nats_cpu = || nats.pid().map_or(0.0, crate::ingest::cpu_seconds);
    let nats_cpu_before = nats_cpu();
    let drain = wait_drained(&stream, "fluxgate-dispatcher", args.deliveries).await?;
    let elapsed = started.elapsed();
    let dispatcher_cpu =
        crate::ingest::cpu_seconds(dispatcher.service.pid()) - dispatcher_cpu_before;
    let nats_cpu = nats_cpu() - nats_cpu_before;
    let (_, dispatcher_peak_kib) = crate::ingest::memory_kib(dispatcher.service.pid())?;
    dispatcher.service.kill();
    anyhow::ensure!(drain.drained, "the dispatcher did not drain the backlog");
    let calls = ApiCalls::of(&cluster);

    let raw = raw_consume(&stream, args.deliveries).await?;
    let rate = args.deliveries as f64 / elapsed.as_secs_f64();
    let raw_rate = args.deliveries as f64 / raw.as_secs_f64();
    println!("{:<36} {:>12} {:>10}", "", "msgs/s", "seconds");
    println!(
        "{:<36} {:>12.0} {:>10.2}",
        "dispatcher (resolve, patch)",
        rate,
        elapsed.as_secs_f64()
    );
    println!(
        "{:<36} {:>12.0} {:>10.2}",
        "raw JetStream consume + ack",
        raw_rate,
        raw.as_secs_f64()
    );
    println!("dispatcher / raw: {:.1}%", rate / raw_rate * 100.0);
    if let Some(steady) = drain.steady_rate() {
        println!(
            "steady drain (from 10% to 90% acknowledged, without start-up and the last coalescing window): {steady:.0} deliveries/s"
        );
    }
    calls.print(args.deliveries);
    println!(
        "largest consumer lag seen: {}; dispatcher peak RSS {:.0} MiB",
        drain.max_lag,
        dispatcher_peak_kib as f64 / 1024.0
    );
    let per_delivery = |cpu: f64| cpu * 1e6 / args.deliveries as f64;
    println!(
        "CPU while draining: dispatcher {dispatcher_cpu:.2} s ({:.0} µs per delivery), nats-server {nats_cpu:.2} s ({:.0} µs per delivery)",
        per_delivery(dispatcher_cpu),
        per_delivery(nats_cpu),
    );
    history_queries(&nats.url(), &jetstream, args.deliveries).await
}

/// What the dispatcher asked the API server about the targets (discovery and its Lease aside).
struct ApiCalls {
    reads: usize,
    watches: usize,
    patches: usize,
}

impl ApiCalls {
    fn of(cluster: &ApiServer) -> Self {
        let mut calls = Self {
            reads: 0,
            watches: 0,
            patches: 0,
        };
        for request in cluster.requests() {
            if !request.path.contains("/gitrepositories") {
                continue;
            }
            match request.method.as_str() {
                "PATCH" => calls.patches += 1,
                "GET" if request.query.contains("watch=true") => calls.watches += 1,
                "GET" => calls.reads += 1,
                _ => {}
            }
        }
        calls
    }

    fn print(&self, deliveries: usize) {
        let per = |n: usize| n as f64 / deliveries as f64;
        println!(
            "API calls on the targets     {:>10} {:>10} {:>10} {:>14}",
            "reads", "watches", "patches", "per delivery"
        );
        println!(
            "  fluxgate-dispatcher        {:>10} {:>10} {:>10} {:>14.4}",
            self.reads,
            self.watches,
            self.patches,
            per(self.reads + self.watches + self.patches)
        );
        // Flux's receiver reads (a GET, or a LIST for `*`) and patches each target per webhook.
        println!(
            "  Flux's receiver (1 target) {:>10} {:>10} {:>10} {:>14.4}",
            deliveries, 0, deliveries, 2.0
        );
    }
}

/// Times `fluxgate deliveries` queries over the stored backlog and its outcome trail.
async fn history_queries(
    nats_url: &str,
    jetstream: &jetstream::Context,
    deliveries: usize,
) -> anyhow::Result<()> {
    let outcomes = jetstream
        .get_stream(contract::OUTCOMES_STREAM)
        .await?
        .info()
        .await?
        .state
        .messages;
    println!(
        "fluxgate CLI over {deliveries} stored deliveries and {outcomes} outcome events (seconds, whole command):"
    );
    let middle = format!("backlog-{}", deliveries / 2);
    let queries: [(&str, Vec<&str>); 5] = [
        ("deliveries list (newest 50)", vec!["deliveries", "list"]),
        (
            "deliveries list --receiver bench/hook-7",
            vec!["deliveries", "list", "--receiver", "bench/hook-7"],
        ),
        (
            "deliveries list --status failed (none: reads all)",
            vec!["deliveries", "list", "--status", "failed"],
        ),
        (
            "deliveries list --since 1h (reads all)",
            vec!["deliveries", "list", "--since", "1h"],
        ),
        (
            "deliveries show <id> (through the index)",
            vec!["deliveries", "show", middle.as_str()],
        ),
    ];
    for (name, args) in queries {
        let started = Instant::now();
        let output = std::process::Command::new(fluxgate_tests::workspace_binary("fluxgate"))
            .env("NATS_URL", nats_url)
            .args(["-o", "json"])
            .args(&args)
            .output()?;
        let elapsed = started.elapsed();
        anyhow::ensure!(
            output.status.success(),
            "fluxgate {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        println!("  {name:<52} {:>6.2}", elapsed.as_secs_f64());
    }
    Ok(())
}

/// Publishes the backlog as ingest would store it, 256 acks in flight at a time.
async fn store_backlog(jetstream: &jetstream::Context, args: &Args) -> anyhow::Result<()> {
    let mut pending = futures::stream::FuturesUnordered::new();
    for i in 0..args.deliveries {
        let receiver = format!("hook-{}", i % args.targets);
        let id = format!("backlog-{i}");
        let meta = fluxgate_tests::webhook::sender_delivery(&id, NS, &receiver);
        let message = jetstream::message::PublishMessage::build()
            .payload("{}".into())
            .headers(meta.to_headers())
            .message_id(meta.key());
        pending.push(
            jetstream
                .send_publish(contract::delivery_subject(NS, &receiver), message)
                .await?
                .into_future(),
        );
        if pending.len() >= 256
            && let Some(ack) = pending.next().await
        {
            ack?;
        }
    }
    while let Some(ack) = pending.next().await {
        ack?;
    }
    Ok(())
}

/// How a consumer went through its backlog.
struct Drain {
    /// Everything acknowledged within the deadline.
    drained: bool,
    /// The largest backlog (pending + unacked) seen.
    max_lag: u64,
    /// When the share acknowledged first reached 10 % and 90 %, and how many that was.
    tenth: Option<(Instant, u64)>,
    nine_tenths: Option<(Instant, u64)>,
}

impl Drain {
    /// Deliveries acknowledged per second between 10 % and 90 % of the backlog: the rate once
    /// started, before the last deliveries wait out their coalescing window.
    fn steady_rate(&self) -> Option<f64> {
        let ((from, first), (to, last)) = (self.tenth?, self.nine_tenths?);
        let seconds = (to - from).as_secs_f64();
        (seconds > 0.0).then(|| (last - first) as f64 / seconds)
    }
}

/// Polls a consumer until it has delivered and had acknowledged `total` messages.
async fn wait_drained(
    stream: &jetstream::stream::Stream,
    name: &str,
    total: usize,
) -> anyhow::Result<Drain> {
    let total = total as u64;
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut drain = Drain {
        drained: false,
        max_lag: 0,
        tenth: None,
        nine_tenths: None,
    };
    while Instant::now() < deadline {
        if let Ok(mut consumer) = stream.get_consumer::<consumer::pull::Config>(name).await {
            let info = consumer.info().await.context("consumer info")?;
            let lag = info.num_pending + info.num_ack_pending as u64;
            drain.max_lag = drain.max_lag.max(lag);
            let acknowledged = total.saturating_sub(lag);
            let now = Instant::now();
            if acknowledged * 10 >= total {
                drain.tenth.get_or_insert((now, acknowledged));
            }
            if acknowledged * 10 >= total * 9 {
                drain.nine_tenths.get_or_insert((now, acknowledged));
            }
            if info.ack_floor.stream_sequence >= total && lag == 0 {
                drain.drained = true;
                return Ok(drain);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(drain)
}

/// Reads the whole stream with a fresh durable pull consumer, acking each message.
async fn raw_consume(stream: &jetstream::stream::Stream, total: usize) -> anyhow::Result<Duration> {
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bench-raw".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let mut messages = consumer.messages().await?;
    let mut seen = 0;
    while seen < total {
        let message = messages
            .next()
            .await
            .context("stream ended")?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        seen += 1;
    }
    Ok(started.elapsed())
}
