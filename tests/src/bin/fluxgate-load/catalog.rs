//! The catalog benchmark: thousands of Receivers, each with its own token Secret, in the
//! Kubernetes API stand-in; the release `fluxgate-ingest` and `fluxgate-dispatcher` started on
//! them. Measures the time until each is ready, their memory, the time until a Receiver created
//! then is served and until a rotated token moves its hook path, and the Secret reads, at start
//! and while nothing changes.

use std::time::{Duration, Instant};

use fluxgate_tests::apiserver::{ApiServer, ObjectRef};
use fluxgate_tests::dispatcher::Dispatcher;
use fluxgate_tests::http;
use fluxgate_tests::ingest::Ingest;
use fluxgate_tests::nats::NatsServer;
use fluxgate_tests::webhook::hook_path;
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// Receivers, each with a Secret of its own.
    #[arg(long, default_value_t = 10_000)]
    receivers: usize,
    /// Distinct Secrets they name (receiver i names Secret i mod this): fewer than receivers
    /// when Receivers share a token Secret, as a namespace's often do.
    #[arg(long)]
    secrets: Option<usize>,
    /// Label the Secrets and have ingest read them with one watch (`--secrets-selector`)
    /// instead of one per Secret.
    #[arg(long)]
    labelled: bool,
    /// Namespaces they are spread over.
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    /// Receivers created, and tokens rotated, one at a time while the services run.
    #[arg(long, default_value_t = 10)]
    changes: usize,
    /// How long to count the API requests of both services while nothing changes.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    idle: Duration,
}

fn namespace(i: usize, args: &Args) -> String {
    format!("tenant-{}", i % args.namespaces.max(1))
}

const LABEL: &str = "fluxgate.io/webhook-token";

fn secret(name: &str, namespace: &str, token: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace, "labels": {LABEL: "true"}}, "stringData": {"token": token}})
}

fn receiver(name: &str, namespace: &str, secret: &str) -> serde_json::Value {
    json!({
        "apiVersion": "notification.toolkit.fluxcd.io/v1",
        "kind": "Receiver",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "type": "generic",
            "secretRef": {"name": secret},
            "resources": [{"kind": "GitRepository", "name": name}],
        },
    })
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let nats = NatsServer::start().await;
    let cluster = ApiServer::start_local().await;
    let dir = tempfile::tempdir()?;
    let kubeconfig = cluster.write_kubeconfig(dir.path())?;
    let secrets = args
        .secrets
        .unwrap_or(args.receivers)
        .clamp(1, args.receivers.max(1));
    for i in 0..args.receivers {
        // Secret i mod `secrets`, in the receiver's namespace.
        let (name, ns) = (format!("hook-{i}"), namespace(i, &args));
        let token = i % secrets;
        let secret_name = format!("token-{token}");
        if token == i
            || cluster
                .get(&ObjectRef::new("v1", "Secret", &ns, &secret_name))
                .is_none()
        {
            cluster.apply(secret(&secret_name, &ns, &format!("token-{token}")));
        }
        cluster.apply(receiver(&name, &ns, &secret_name));
    }
    println!(
        "fluxgate-load catalog: {} Receivers naming {} Secrets over {} namespaces in the API stand-in",
        args.receivers, secrets, args.namespaces
    );

    let started = Instant::now();
    let selector = format!("{LABEL}=true");
    let ingest_args: &[&str] = match args.labelled {
        true => &["--secrets-selector", &selector],
        false => &[],
    };
    // Transparent huge pages off, as the image runs both services (see docs/benchmarks.md).
    let kubeconfig_path = kubeconfig.display().to_string();
    let no_huge_pages = ("MIMALLOC_ALLOW_THP", "0");
    let env = [("KUBECONFIG", kubeconfig_path.as_str()), no_huge_pages];
    let ingest = Ingest::start_with(&nats.url(), ingest_args, &env).await;
    let ingest_ready = started.elapsed();
    let started = Instant::now();
    let dispatcher = Dispatcher::start_with(
        &nats.url(),
        None,
        &kubeconfig,
        // Patches are not what this measures.
        &["--leader-election", "false", "--dry-run"],
        &[no_huge_pages],
    )
    .await;
    wait_ready(&dispatcher.admin_url("/readyz")).await?;
    let dispatcher_ready = started.elapsed();
    let (ingest_rss, _) = crate::ingest::memory_kib(ingest.pid())?;
    let (dispatcher_rss, _) = crate::ingest::memory_kib(dispatcher.service.pid())?;
    let secret_reads_at_start = secret_requests(&cluster);

    let mut created = Vec::new();
    let mut rotated = Vec::new();
    for c in 0..args.changes {
        let (name, ns) = (format!("new-{c}"), namespace(c, &args));
        let begun = Instant::now();
        cluster.apply(secret(&format!("{name}-token"), &ns, "fresh"));
        cluster.apply(receiver(&name, &ns, &format!("{name}-token")));
        served(&ingest, "fresh", &name, &ns).await?;
        created.push(begun.elapsed());

        // A Receiver with a Secret of its own (one created above), so that the rotation moves
        // one hook path.
        let begun = Instant::now();
        cluster.apply(secret(&format!("{name}-token"), &ns, "rotated"));
        served(&ingest, "rotated", &name, &ns).await?;
        rotated.push(begun.elapsed());
    }

    let before_idle = cluster.requests().len();
    tokio::time::sleep(args.idle).await;
    let mut idle_requests = std::collections::BTreeMap::new();
    for request in &cluster.requests()[before_idle..] {
        let watch = if request.query.contains("watch=true") {
            " (watch)"
        } else {
            ""
        };
        *idle_requests
            .entry(format!("{} {}{watch}", request.method, request.path))
            .or_insert(0) += 1;
    }

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let spread = |times: &mut Vec<Duration>| {
        times.sort();
        let median = times.get(times.len() / 2).copied().unwrap_or_default();
        let max = times.last().copied().unwrap_or_default();
        format!("median {:.1} ms, max {:.1} ms", ms(median), ms(max))
    };
    println!(
        "ingest      ready after {:>6.2} s, RSS {:>6.1} MiB",
        ingest_ready.as_secs_f64(),
        ingest_rss as f64 / 1024.0
    );
    println!(
        "dispatcher  ready after {:>6.2} s, RSS {:>6.1} MiB",
        dispatcher_ready.as_secs_f64(),
        dispatcher_rss as f64 / 1024.0
    );
    println!(
        "a Receiver created, until served:         {}",
        spread(&mut created)
    );
    println!(
        "a token rotated, until its new path serves: {}",
        spread(&mut rotated)
    );
    println!(
        "Secret requests at start: {} lists, {} watches ({} Secrets); after {} creations and {} rotations: {} lists, {} watches",
        secret_reads_at_start.0,
        secret_reads_at_start.1,
        secrets,
        args.changes,
        args.changes,
        secret_requests(&cluster).0 - secret_reads_at_start.0,
        secret_requests(&cluster).1 - secret_reads_at_start.1,
    );
    println!(
        "API requests of both services over {:?} with nothing changing: {} {idle_requests:?}",
        args.idle,
        idle_requests.values().sum::<usize>()
    );
    Ok(())
}

/// Polls `/readyz` until it answers 200.
async fn wait_ready(url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        if http::get(url).await.is_ok_and(|r| r.status == 200) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("{url} not ready within 300 s")
}

/// Polls the receiver's hook path (for `token`) until ingest accepts a webhook there.
async fn served(ingest: &Ingest, token: &str, name: &str, namespace: &str) -> anyhow::Result<()> {
    let url = ingest.hook_url(&hook_path(token, name, namespace));
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let answer = http::post(&url, &[], String::new()).await;
        if answer.map_err(|e| anyhow::anyhow!("{e}"))?.status == 202 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    anyhow::bail!("{namespace}/{name} not served within 60 s")
}

/// Requests for Secrets so far: (lists, watches).
fn secret_requests(cluster: &ApiServer) -> (usize, usize) {
    let requests = cluster.requests();
    let secrets = requests.iter().filter(|r| r.path.ends_with("/secrets"));
    let (watches, lists): (Vec<_>, Vec<_>) = secrets.partition(|r| r.query.contains("watch=true"));
    (lists.len(), watches.len())
}
