//! The slow-sender benchmark: C connections each declare a large body, send part of it and
//! stall, unauthenticated, as a flood against the internet-facing ingest would. Prints ingest's
//! memory while they hold, and what the connections were answered.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fluxgate_tests::ingest::Ingest;
use fluxgate_tests::nats::NatsServer;
use fluxgate_tests::webhook::{hook_path, receiver_manifest, secret_manifest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::ingest::memory_kib;

#[derive(clap::Args)]
pub struct Args {
    /// Connections that each send one request.
    #[arg(long, default_value_t = 5000)]
    connections: usize,
    /// The body size each request declares (`content-length`).
    #[arg(long, default_value_t = 3 * 1024 * 1024)]
    declared_bytes: usize,
    /// How much of it each sends before stalling.
    #[arg(long, default_value_t = 512 * 1024)]
    sent_bytes: usize,
    /// The receiver type attacked: `github` (an HMAC over the body) or `gitlab` (a header token).
    #[arg(long, default_value = "github")]
    receiver_type: String,
    /// How long the connections hold once they are all open.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// A flag for fluxgate-ingest (repeat for more), e.g. `--ingest-arg=--max-connections=1000`.
    #[arg(long = "ingest-arg", allow_hyphen_values = true)]
    ingest_args: Vec<String>,
}

const TOKEN: &str = "slow-secret";
const CHUNK: usize = 16 * 1024;

pub async fn run(args: Args) -> anyhow::Result<()> {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir()?;
    let receivers = dir.path().join("receivers.yaml");
    let manifests = [
        secret_manifest("token", "bench", TOKEN),
        receiver_manifest("target", "bench", &args.receiver_type, "token", ""),
    ];
    std::fs::write(&receivers, manifests.join("---\n"))?;
    let ingest_args: Vec<&str> = args.ingest_args.iter().map(String::as_str).collect();
    let ingest = Ingest::start(&nats.url(), &receivers, &ingest_args).await;
    let path = hook_path(TOKEN, "target", "bench");
    let (idle_rss, _) = memory_kib(ingest.pid())?;

    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: fluxgate\r\ncontent-type: application/json\r\n\
         x-github-event: push\r\nx-hub-signature-256: sha256={}\r\n\
         x-gitlab-event: Push Hook\r\nx-gitlab-token: not-the-token\r\n\
         content-length: {}\r\n\r\n",
        "0".repeat(64),
        args.declared_bytes
    );
    let (release, released) = watch::channel(false);
    let opened = Arc::new(AtomicUsize::new(0));
    let not_opened = Arc::new(AtomicUsize::new(0));
    let fully_sent = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let (head, opened, fully_sent) = (head.clone(), opened.clone(), fully_sent.clone());
        let not_opened = not_opened.clone();
        let mut released = released.clone();
        let (port, sent_bytes) = (ingest.port, args.sent_bytes);
        tasks.push(tokio::spawn(async move {
            let open = async {
                let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                stream.write_all(head.as_bytes()).await?;
                std::io::Result::Ok(stream)
            };
            let mut stream = match open.await {
                Ok(stream) => stream,
                Err(error) => {
                    not_opened.fetch_add(1, Ordering::Relaxed);
                    return format!("not opened: {}", error.kind());
                }
            };
            opened.fetch_add(1, Ordering::Relaxed);
            let attempt = async {
                let chunk = vec![b'x'; CHUNK];
                let mut left = sent_bytes;
                while left > 0 {
                    let n = left.min(CHUNK);
                    stream.write_all(&chunk[..n]).await?;
                    left -= n;
                }
                fully_sent.fetch_add(1, Ordering::Relaxed);
                let mut answer = vec![0; 1024];
                let n = stream.read(&mut answer).await?;
                std::io::Result::Ok(status_of(&answer[..n]))
            };
            tokio::select! {
                result = attempt => match result {
                    Ok(status) => status,
                    Err(error) => format!("error: {}", error.kind()),
                },
                _ = released.wait_for(|r| *r) => "no answer while holding".to_owned(),
            }
        }));
    }
    // Sample ingest's memory until every connection is open (or gave up: past the connection
    // cap, the kernel's listen queue fills and connects time out), then while they hold.
    let mut peak_rss = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while opened.load(Ordering::Relaxed) + not_opened.load(Ordering::Relaxed) < args.connections
        && Instant::now() < deadline
    {
        peak_rss = peak_rss.max(memory_kib(ingest.pid())?.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_open = started.elapsed();
    let holding = Instant::now();
    while holding.elapsed() < args.hold {
        peak_rss = peak_rss.max(memory_kib(ingest.pid())?.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, high_water) = memory_kib(ingest.pid())?;
    let _ = release.send(true);
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    for task in tasks {
        *answers.entry(task.await?).or_default() += 1;
    }

    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "fluxgate-load slow: {} connections to a {} receiver, each declaring {} bytes and sending {} then stalling; ingest flags {:?}",
        args.connections,
        args.receiver_type,
        args.declared_bytes,
        args.sent_bytes,
        args.ingest_args
    );
    println!(
        "opened {} in {:.1} s (the rest still waiting); {} sent all they meant to; held {:?}",
        opened.load(Ordering::Relaxed),
        all_open.as_secs_f64(),
        fully_sent.load(Ordering::Relaxed),
        args.hold
    );
    println!(
        "ingest RSS: {:.1} MiB idle, {:.1} MiB at most while sampled (VmHWM {:.1} MiB)",
        mib(idle_rss),
        mib(peak_rss),
        mib(high_water)
    );
    for (answer, count) in answers {
        println!("  {count:>6}  {answer}");
    }
    Ok(())
}

/// `HTTP/1.1 401 ...` -> `401`; anything else as it came.
fn status_of(answer: &[u8]) -> String {
    let text = String::from_utf8_lossy(answer);
    match text.split(' ').nth(1) {
        Some(code) if text.starts_with("HTTP/") => format!("answered {code}"),
        _ if answer.is_empty() => "closed without an answer".to_owned(),
        _ => format!("answered {:?}", text.lines().next().unwrap_or_default()),
    }
}
