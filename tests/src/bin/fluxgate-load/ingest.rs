//! The ingest benchmark. Starts a private nats-server, the release `fluxgate-ingest` and
//! `fluxgate-baseline` (a bare hyper handler that publishes each body to the same stream), sends
//! N signed GitHub webhooks over C keep-alive connections to each, taking turns in rounds, and prints
//! throughput, latency percentiles, CPU per webhook and ingest's memory, ingest's as ratios of
//! the baseline's.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use fluxgate_tests::ingest::Ingest;
use fluxgate_tests::nats::NatsServer;
use fluxgate_tests::webhook::{
    github_push_body, github_signature, hook_path, receiver_manifest, secret_manifest,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

#[derive(clap::Args)]
pub struct Args {
    /// Webhooks to send (and raw messages to publish).
    #[arg(long, default_value_t = 50_000)]
    requests: usize,
    /// Concurrent keep-alive connections (and concurrent raw publishers).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Size of each webhook body.
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
    /// Turns each server takes (ingest, then the baseline), the requests shared among them.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Offer both servers this many webhooks a second instead of as many as they take: their
    /// CPU per webhook compared at the same pace, where neither gains from batching more work
    /// into each wake-up and write because it is the faster one.
    #[arg(long)]
    rate: Option<u32>,
    /// Export ingest's spans to an OTLP receiver in this process, sampling this share of
    /// traces (`OTEL_TRACES_SAMPLER=traceidratio`); without it, no tracing.
    #[arg(long)]
    trace_ratio: Option<f64>,
}

const TOKEN: &str = "load-secret";

#[derive(Default)]
pub struct Phase {
    elapsed: Duration,
    latencies: Vec<Duration>,
}

/// A server under load: its port, and the processes whose CPU it costs (itself, nats-server,
/// this tool).
struct Server {
    port: u16,
    pids: [u32; 3],
}

impl Server {
    fn new(port: u16, pid: u32, nats_pid: u32) -> Self {
        Self {
            port,
            pids: [pid, nats_pid, std::process::id()],
        }
    }
}

/// A server's rounds added up, and its own CPU in each round.
#[derive(Default)]
struct Measured {
    phase: Phase,
    cpu: [f64; 3],
    per_round: Vec<f64>,
}

impl Measured {
    fn add(&mut self, phase: Phase, cpu: [f64; 3]) {
        self.per_round.push(cpu[0]);
        self.phase.elapsed += phase.elapsed;
        self.phase.latencies.extend(phase.latencies);
        for (total, spent) in self.cpu.iter_mut().zip(cpu) {
            *total += spent;
        }
    }
}

impl Phase {
    pub fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies.get(index).copied().unwrap_or_default()
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.connections > 0 && args.rounds > 0 && args.requests >= args.connections * args.rounds,
        "need requests >= connections * rounds, both > 0"
    );
    anyhow::ensure!(args.rate != Some(0), "--rate must be above 0");
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir()?;
    let receivers = dir.path().join("receivers.yaml");
    let manifests = [
        secret_manifest("token", "bench", TOKEN),
        receiver_manifest("github", "bench", "github", "token", ""),
    ];
    std::fs::write(&receivers, manifests.join("---\n"))?;
    let collector = match args.trace_ratio {
        Some(_) => Some(fluxgate_tests::otlp::Receiver::start().await),
        None => None,
    };
    let (endpoint, ratio) = (
        collector.as_ref().map(|c| c.endpoint()).unwrap_or_default(),
        args.trace_ratio.unwrap_or_default().to_string(),
    );
    let tracing_env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_TRACES_SAMPLER", "traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", ratio.as_str()),
    ];
    let file = receivers.display().to_string();
    let ingest = Ingest::start_with(
        &nats.url(),
        &["--receivers-file", file.as_str()],
        if collector.is_some() {
            &tracing_env
        } else {
            &[]
        },
    )
    .await;
    let url = ingest.hook_url(&hook_path(TOKEN, "github", "bench"));
    let (idle_rss, _) = memory_kib(ingest.pid())?;
    let body = Bytes::from(github_push_body(args.body_bytes));
    let baseline = Baseline::start(&nats.url())?;
    let nats_pid = nats.pid().context("nats-server is not running")?;
    let servers = [
        Server::new(ingest.port, ingest.pid(), nats_pid),
        Server::new(baseline.port, baseline.child.id(), nats_pid),
    ];
    // Warm up connections, the stream and the allocator of both before measuring.
    for server in &servers {
        let warm = Load {
            connections: args.connections,
            total: args.connections * 10,
            rate: None,
        };
        send_webhooks(server.port, &url, &body, &warm, "warm").await?;
    }
    // The two take turns, so that what else the shared cores are doing weighs on both alike.
    let mut measured = [Measured::default(), Measured::default()];
    for round in 0..args.rounds {
        let share = args.requests / args.rounds + usize::from(round < args.requests % args.rounds);
        for (server, measured) in servers.iter().zip(&mut measured) {
            let before = server.pids.map(cpu_seconds);
            let tag = format!("load{round}");
            let load = Load {
                connections: args.connections,
                total: share,
                rate: args.rate,
            };
            let phase = send_webhooks(server.port, &url, &body, &load, &tag);
            measured.add(phase.await?, cpu_delta(server.pids, before));
        }
    }
    let (rss, peak) = memory_kib(ingest.pid())?;
    let [
        Measured {
            phase: mut ingest_phase,
            cpu: during_ingest,
            per_round: ingest_rounds,
        },
        Measured {
            phase: mut baseline_phase,
            cpu: during_baseline,
            per_round: baseline_rounds,
        },
    ] = measured;
    // Each round's ratio, its pair run back to back: the spread shows how much the shared
    // cores moved under the measure, and the median is the figure one slow round cannot move.
    let mut round_ratios: Vec<f64> = (ingest_rounds.iter().zip(&baseline_rounds))
        .map(|(ingest, baseline)| ingest / baseline.max(1e-9))
        .collect();
    round_ratios.sort_by(f64::total_cmp);
    let middle = round_ratios.len() / 2;
    let median = if round_ratios.len().is_multiple_of(2) {
        (round_ratios[middle - 1] + round_ratios[middle]) / 2.0
    } else {
        round_ratios[middle]
    };

    let ratio = ingest_phase.rate() / baseline_phase.rate();
    let tracing = match (&collector, args.trace_ratio) {
        (Some(collector), Some(ratio)) => format!(
            "spans exported at sampling ratio {ratio} ({} received)",
            collector.spans().len()
        ),
        _ => "no tracing".to_owned(),
    };
    let pace = match args.rate {
        Some(rate) => format!("at {rate}/s"),
        None => "as fast as answered".to_owned(),
    };
    println!(
        "fluxgate-load: {} requests of {} bytes over {} connections {pace} in {} rounds each, nats-server on 127.0.0.1; {tracing}",
        args.requests, args.body_bytes, args.connections, args.rounds
    );
    println!(
        "{:<28} {:>12} {:>10} {:>10}",
        "", "msgs/s", "p50 ms", "p99 ms"
    );
    for (name, phase) in [
        ("ingest (HTTP -> JetStream)", &mut ingest_phase),
        ("baseline (bare hyper publish)", &mut baseline_phase),
    ] {
        let (p50, p99) = (phase.percentile(0.50), phase.percentile(0.99));
        println!(
            "{name:<28} {:>12.0} {:>10.2} {:>10.2}",
            phase.rate(),
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
    println!("ingest / baseline throughput: {:.0}%", ratio * 100.0);
    let per_webhook = |cpu: f64| cpu * 1e6 / args.requests as f64;
    println!(
        "CPU per webhook: ingest {:.0} µs, baseline {:.0} µs: {:.2}x",
        per_webhook(during_ingest[0]),
        per_webhook(during_baseline[0]),
        during_ingest[0] / during_baseline[0].max(1e-9)
    );
    println!(
        "per round: median {median:.2}x, {:.2}x - {:.2}x over {} rounds",
        round_ratios[0],
        round_ratios[round_ratios.len() - 1],
        round_ratios.len()
    );
    println!(
        "CPU seconds (server, nats-server, load tool): ingest phase {during_ingest:.2?}, baseline phase {during_baseline:.2?}"
    );
    println!(
        "ingest RSS: {:.1} MiB idle before the run, {:.1} MiB after it (peak {:.1} MiB)",
        idle_rss as f64 / 1024.0,
        rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    Ok(())
}

/// What to send: `total` webhooks over `connections`, at `rate` a second or as fast as answered.
struct Load {
    connections: usize,
    total: usize,
    rate: Option<u32>,
}

/// Sends signed webhooks over keep-alive HTTP/1.1 connections. Like wrk, the client writes
/// ready-made request bytes and reads just the status line, headers and body, so that the load
/// generator (which shares the machine) takes as little CPU as it can.
async fn send_webhooks(
    port: u16,
    url: &str,
    body: &Bytes,
    load: &Load,
    tag: &str,
) -> anyhow::Result<Phase> {
    let Load {
        connections,
        total,
        rate,
    } = *load;
    let path = url
        .split_once("/hook/")
        .map(|(_, digest)| format!("/hook/{digest}"))
        .context("hook url")?;
    let signature = github_signature(TOKEN, body);
    // Every request is written out before the clock starts.
    let mut batches = Vec::with_capacity(connections);
    for connection in 0..connections {
        let share = total / connections + usize::from(connection < total % connections);
        let requests: Vec<Vec<u8>> = (0..share)
            .map(|i| {
                let mut request = format!(
                    "POST {path} HTTP/1.1\r\nhost: fluxgate\r\ncontent-type: application/json\r\n\
                     x-github-event: push\r\nx-github-delivery: {tag}-{connection}-{i}\r\n\
                     x-hub-signature-256: {signature}\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                request.extend_from_slice(body);
                request
            })
            .collect();
        batches.push(requests);
    }
    let started = Instant::now();
    // Paced, each connection sends its share of the rate, the connections' turns spread evenly.
    let every = rate.map(|rate| Duration::from_secs_f64(connections as f64 / f64::from(rate)));
    let mut tasks = Vec::new();
    for (connection, requests) in batches.into_iter().enumerate() {
        let mut pace = every.map(|every| {
            let first = tokio::time::Instant::from_std(started)
                + every.mul_f64(connection as f64 / connections as f64);
            let mut pace = tokio::time::interval_at(first, every);
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            pace
        });
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            stream.set_nodelay(true)?;
            let mut stream = tokio::io::BufReader::new(stream);
            let mut latencies = Vec::with_capacity(requests.len());
            for request in requests {
                if let Some(pace) = &mut pace {
                    pace.tick().await;
                }
                let sent = Instant::now();
                stream.get_mut().write_all(&request).await?;
                let status = read_response(&mut stream).await?;
                latencies.push(sent.elapsed());
                anyhow::ensure!(status == 202, "ingest answered {status}");
            }
            anyhow::Ok(latencies)
        }));
    }
    collect(tasks, started).await
}

/// Reads one HTTP/1.1 response with a `content-length` and returns its status code.
async fn read_response(
    stream: &mut tokio::io::BufReader<tokio::net::TcpStream>,
) -> anyhow::Result<u16> {
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let mut length = 0;
    loop {
        line.clear();
        anyhow::ensure!(stream.read_line(&mut line).await? > 0, "connection closed");
        let Some((name, value)) = line.trim_end().split_once(':') else {
            break;
        };
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse()?;
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await?;
    Ok(status)
}

/// `fluxgate-baseline`, running until dropped.
struct Baseline {
    child: std::process::Child,
    port: u16,
}

impl Baseline {
    /// Starts it against `nats_url` and learns its port from its first line.
    fn start(nats_url: &str) -> anyhow::Result<Self> {
        use std::io::BufRead as _;
        let mut child =
            std::process::Command::new(fluxgate_tests::workspace_binary("fluxgate-baseline"))
                .arg(nats_url)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .context("start fluxgate-baseline")?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("its stdout")?;
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let port = (line.trim().strip_prefix("listening on "))
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("fluxgate-baseline said {line:?}"))?;
        Ok(Self { child, port })
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn collect(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Vec<Duration>>>>,
    started: Instant,
) -> anyhow::Result<Phase> {
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(Phase {
        elapsed: started.elapsed(),
        latencies,
    })
}

/// Current and peak resident memory of a process, in KiB.
pub fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).context("read /proc status")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// User plus system CPU time of a process so far, in seconds (Linux reports clock ticks of 1/100 s).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn cpu_delta(pids: [u32; 3], before: [f64; 3]) -> [f64; 3] {
    let mut delta = [0.0; 3];
    for (i, pid) in pids.iter().enumerate() {
        delta[i] = ((cpu_seconds(*pid) - before[i]) * 100.0).round() / 100.0;
    }
    delta
}
