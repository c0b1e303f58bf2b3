//! The soak: the real ingest and dispatcher under a long mix of valid, duplicate, badly signed,
//! oversized and slow requests, with a NATS restart and a dispatcher SIGKILL along the way. It
//! reports what senders were answered, whether every delivery answered 2xx reached a terminal
//! outcome, and the memory and open files of each process over time. `fluxgate-load soak` runs
//! it for minutes; `tests/tests/soak.rs` for one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use fluxgate_shared::contract::{self, DeliveryMeta, Outcome};
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::http;
use crate::stack::Stack;
use crate::webhook::{github_push_body, github_signature, hook_path, secret_manifest};

const NS: &str = "soak";
const TOKEN: &str = "soak-secret";
/// Ingest's body limit in the soak; oversized requests send twice as much.
const MAX_BODY: usize = 64 * 1024;
/// Ingest's header and body deadlines: how long a slow client holds its connection.
const CLIENT_TIMEOUT: &str = "2s";
/// Event types after which a delivery needs nothing more.
const TERMINAL: [&str; 5] = [
    "patched",
    "duplicate",
    "failed",
    "filtered_out",
    "would_patch",
];
/// How long the dispatcher gets, after the load, to finish every stored delivery.
const DRAIN_DEADLINE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Duration,
    /// Senders of the request mix, each one request at a time.
    pub senders: usize,
    /// The pause between two requests of a sender.
    pub pace: Duration,
    /// Slow clients, each holding a connection until ingest cuts it off, then opening another.
    pub slow_clients: usize,
    /// Receivers, each with a GitRepository of its own.
    pub receivers: usize,
    /// How often memory and open files are sampled.
    pub sample_every: Duration,
}

/// What a request was meant to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Valid,
    /// A delivery id already answered 2xx, sent again.
    Duplicate,
    BadSignature,
    Oversized,
    /// Headers and part of a body, then nothing.
    Slow,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Duplicate => "duplicate",
            Self::BadSignature => "bad signature",
            Self::Oversized => "oversized",
            Self::Slow => "slow client",
        }
    }

    /// The mix: of every 20 requests, 14 valid, 2 duplicates, 2 badly signed, 2 oversized.
    fn nth(n: usize) -> Self {
        match n % 20 {
            0..14 => Self::Valid,
            14 | 15 => Self::Duplicate,
            16 | 17 => Self::BadSignature,
            _ => Self::Oversized,
        }
    }
}

/// The processes whose memory and files are sampled.
pub const PROCESSES: [&str; 3] = ["ingest", "dispatcher", "nats-server"];

/// One process's memory and open files at one time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub rss_kib: u64,
    pub fds: usize,
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Duration,
    /// In the order of [`PROCESSES`].
    pub usage: [Usage; 3],
}

#[derive(Debug, Default)]
pub struct Report {
    pub duration: Duration,
    /// Answers by the kind of request: `202`, `202 duplicate`, `401`, ..., or the error.
    pub answers: BTreeMap<Kind, BTreeMap<String, usize>>,
    /// Answers `202` that stored a delivery (`"duplicate": false`).
    pub accepted: usize,
    /// Messages in the deliveries stream: the accepted ones, and any stored whose answer was
    /// lost (a 503 after JetStream took it).
    pub stored: usize,
    /// Stored deliveries with a terminal outcome.
    pub terminal: usize,
    /// Delivery ids answered 2xx of which no stored delivery reached a terminal outcome.
    pub lost: Vec<String>,
    /// Outcome events by type.
    pub outcomes: BTreeMap<String, usize>,
    /// `fluxgate_ingest_requests_total` by outcome, as ingest counted.
    pub ingest_outcomes: BTreeMap<String, u64>,
    /// What happened when (the NATS restart, the dispatcher's SIGKILL).
    pub events: Vec<(Duration, String)>,
    pub samples: Vec<Sample>,
}

/// What the senders share: the answers so far and the ids answered 2xx (for duplicates).
#[derive(Default)]
struct Tally {
    answers: BTreeMap<Kind, BTreeMap<String, usize>>,
    accepted: usize,
    /// Each with the receiver it went to.
    accepted_ids: Vec<(String, usize)>,
}

impl Tally {
    fn count(&mut self, kind: Kind, answer: String) {
        *self
            .answers
            .entry(kind)
            .or_default()
            .entry(answer)
            .or_default() += 1;
    }
}

pub async fn run(options: Options) -> Report {
    let mut stack = start(&options).await;
    let urls: Vec<String> = (0..options.receivers)
        .map(|r| stack.hook_url(TOKEN, &format!("hook-{r}"), NS))
        .collect();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    for sender in 0..options.senders {
        let (urls, tally, stopped) = (urls.clone(), tally.clone(), stopped.clone());
        tasks.push(tokio::spawn(send_mix(
            sender,
            urls,
            options.pace,
            tally,
            stopped,
        )));
    }
    for _ in 0..options.slow_clients {
        let (tally, stopped) = (tally.clone(), stopped.clone());
        let path = hook_path(TOKEN, "hook-0", NS);
        tasks.push(tokio::spawn(send_slowly(
            stack.ingest().port,
            path,
            tally,
            stopped,
        )));
    }

    let mut report = Report::default();
    let started = Instant::now();
    let nats_restart = started + options.duration / 3;
    let dispatcher_kill = started + options.duration / 2;
    let (mut restarted, mut killed) = (false, false);
    let mut sampling = tokio::time::interval(options.sample_every);
    while started.elapsed() < options.duration {
        sampling.tick().await;
        report.samples.push(Sample {
            at: started.elapsed(),
            usage: usage(&stack),
        });
        if !restarted && Instant::now() >= nats_restart {
            restarted = true;
            report
                .events
                .push((started.elapsed(), "nats-server SIGKILLed".into()));
            stack.nats_mut().restart().await;
            report
                .events
                .push((started.elapsed(), "nats-server accepting clients".into()));
        }
        if !killed && Instant::now() >= dispatcher_kill {
            killed = true;
            report
                .events
                .push((started.elapsed(), "dispatcher SIGKILLed".into()));
            stack.dispatcher_mut().service.kill();
            let successor = stack.start_dispatcher(&dispatcher_args()).await;
            *stack.dispatcher_mut() = successor;
            report
                .events
                .push((started.elapsed(), "new dispatcher started".into()));
        }
    }
    report.duration = started.elapsed();
    let _ = stop.send(true);
    for task in tasks {
        let _ = task.await;
    }
    report.samples.push(Sample {
        at: started.elapsed(),
        usage: usage(&stack),
    });

    let tally = std::mem::take(&mut *tally.lock().expect("tally"));
    report.answers = tally.answers;
    report.accepted = tally.accepted;
    settle(&stack, &tally.accepted_ids, &mut report).await;
    report.ingest_outcomes = ingest_outcomes(&stack.ingest().metrics().await);
    report.samples.push(Sample {
        at: started.elapsed(),
        usage: usage(&stack),
    });
    report
}

fn dispatcher_args() -> Vec<&'static str> {
    // A short lease: the successor of the SIGKILLed leader takes over within 3 s.
    vec!["--lease-duration", "3s", "--coalesce-window", "200ms"]
}

/// NATS, the API stand-in (playing Flux's controllers, so that confirmation runs), receivers
/// `hook-<n>` each targeting GitRepository `repo-<n>`, ingest and a dispatcher.
async fn start(options: &Options) -> Stack {
    let mut manifests = vec![secret_manifest("token", NS, TOKEN)];
    let mut repositories = Vec::new();
    for r in 0..options.receivers {
        manifests.push(format!(
            "apiVersion: notification.toolkit.fluxcd.io/v1\nkind: Receiver\nmetadata:\n  name: hook-{r}\n  namespace: {NS}\nspec:\n  type: github\n  secretRef:\n    name: token\n  resources:\n    - kind: GitRepository\n      name: repo-{r}\n"
        ));
        repositories.push(json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": {"name": format!("repo-{r}"), "namespace": NS},
            "spec": {"url": "https://example.org/repo", "interval": "10m"},
        }));
    }
    let max_body = MAX_BODY.to_string();
    let stack = Stack::builder()
        .cluster(repositories)
        .receivers(manifests.join("---\n"))
        .ingest(&[
            "--max-body-bytes",
            &max_body,
            "--header-timeout",
            CLIENT_TIMEOUT,
            "--body-timeout",
            CLIENT_TIMEOUT,
        ])
        .dispatcher(&dispatcher_args())
        .start()
        .await;
    stack
        .api()
        .play_flux_controllers(Duration::from_millis(100));
    stack
}

/// One sender: the request mix, one request every `pace`, over the receivers in turn.
async fn send_mix(
    sender: usize,
    urls: Vec<String>,
    pace: Duration,
    tally: Arc<Mutex<Tally>>,
    mut stopped: watch::Receiver<bool>,
) {
    let body = github_push_body(2048);
    let signature = github_signature(TOKEN, &body);
    let oversized = github_push_body(2 * MAX_BODY);
    let oversized_signature = github_signature(TOKEN, &oversized);
    let mut pacing = tokio::time::interval(pace);
    for n in 0.. {
        tokio::select! {
            _ = stopped.changed() => return,
            _ = pacing.tick() => {}
        }
        let kind = Kind::nth(n);
        let mut receiver = n % urls.len();
        let mut id = format!("soak-{sender}-{n}");
        let (mut payload, mut signed) = (body.as_slice(), signature.clone());
        match kind {
            Kind::Duplicate => {
                let tally = tally.lock().expect("tally");
                if tally.accepted_ids.is_empty() {
                    continue;
                }
                // Spread over the run, all within the stream's duplicate window (72 h), NATS
                // restarts included. To the receiver the original went to.
                (id, receiver) = tally.accepted_ids[(n * 7919) % tally.accepted_ids.len()].clone();
            }
            Kind::BadSignature => signed = github_signature("not-the-secret", payload),
            Kind::Oversized => (payload, signed) = (&oversized, oversized_signature.clone()),
            Kind::Valid | Kind::Slow => {}
        }
        let url = &urls[receiver];
        let headers = [
            ("content-type", "application/json"),
            ("x-github-event", "push"),
            ("x-github-delivery", id.as_str()),
            ("x-hub-signature-256", signed.as_str()),
        ];
        let answer = match http::post(url, &headers, payload.to_vec()).await {
            Ok(response) if response.status == 202 => {
                let duplicate = serde_json::from_slice::<Value>(&response.body)
                    .is_ok_and(|b| b["duplicate"] == true);
                let mut tally = tally.lock().expect("tally");
                if kind == Kind::Valid {
                    tally.accepted_ids.push((id.clone(), receiver));
                }
                if duplicate {
                    "202 duplicate".to_owned()
                } else {
                    tally.accepted += 1;
                    "202".to_owned()
                }
            }
            Ok(response) => response.status.to_string(),
            Err(error) => format!("error: {error}"),
        };
        tally.lock().expect("tally").count(kind, answer);
    }
}

/// One slow client after another: headers and a tenth of the declared body, then silence until
/// ingest answers or closes.
async fn send_slowly(
    port: u16,
    path: String,
    tally: Arc<Mutex<Tally>>,
    mut stopped: watch::Receiver<bool>,
) {
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: fluxgate\r\ncontent-type: application/json\r\n\
         x-github-event: push\r\nx-hub-signature-256: sha256={}\r\ncontent-length: 10000\r\n\r\n",
        "0".repeat(64)
    );
    loop {
        let attempt = async {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&[b' '; 1000]).await?;
            let mut answer = vec![0; 512];
            let n = stream.read(&mut answer).await?;
            let text = String::from_utf8_lossy(&answer[..n]).into_owned();
            std::io::Result::Ok(match text.split(' ').nth(1) {
                Some(status) if text.starts_with("HTTP/") => status.to_owned(),
                _ => "closed without an answer".to_owned(),
            })
        };
        let answer = tokio::select! {
            _ = stopped.changed() => return,
            answer = attempt => answer.unwrap_or_else(|e| format!("error: {}", e.kind())),
        };
        tally.lock().expect("tally").count(Kind::Slow, answer);
    }
}

/// Each process's memory and open files now (zero for one not running).
fn usage(stack: &Stack) -> [Usage; 3] {
    let pids = [
        Some(stack.ingest().pid()),
        Some(stack.dispatcher().service.pid()),
        stack.nats().pid(),
    ];
    pids.map(|pid| pid.map(usage_of).unwrap_or_default())
}

fn usage_of(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = (status.lines())
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    Usage { rss_kib, fds }
}

/// Waits, up to [`DRAIN_DEADLINE`], until every stored delivery has a terminal outcome, and
/// fills in what was stored, finished and lost.
async fn settle(stack: &Stack, accepted_ids: &[(String, usize)], report: &mut Report) {
    let jetstream = jetstream::new(stack.client().await);
    let mut deliveries = Reader::new(&jetstream, contract::DELIVERIES_STREAM).await;
    let mut outcomes = Reader::new(&jetstream, contract::OUTCOMES_STREAM).await;
    // Stream sequence -> delivery id, and the sequences with a terminal outcome.
    let mut stored: HashMap<u64, String> = HashMap::new();
    let mut finished: HashSet<u64> = HashSet::new();
    let deadline = Instant::now() + DRAIN_DEADLINE;
    let mut polling = tokio::time::interval(Duration::from_millis(500));
    loop {
        polling.tick().await;
        for message in deliveries.read_on().await {
            if let Ok(meta) = DeliveryMeta::read(&message.subject, message.headers.as_ref()) {
                stored.insert(message.sequence, meta.id);
            }
        }
        for message in outcomes.read_on().await {
            let Ok(outcome) = serde_json::from_slice::<Outcome>(&message.payload) else {
                continue;
            };
            let kind = outcome.event.label();
            for one in outcome.per_delivery() {
                if TERMINAL.contains(&kind) {
                    finished.insert(one.seq);
                }
                *report.outcomes.entry(kind.to_owned()).or_default() += 1;
            }
        }
        if stored.keys().all(|s| finished.contains(s)) || Instant::now() >= deadline {
            break;
        }
    }
    report.stored = stored.len();
    report.terminal = stored.keys().filter(|s| finished.contains(s)).count();
    let done: HashSet<&str> = (stored.iter())
        .filter(|(s, _)| finished.contains(s))
        .map(|(_, id)| id.as_str())
        .collect();
    report.lost = (accepted_ids.iter())
        .map(|(id, _)| id)
        .filter(|id| !done.contains(id.as_str()))
        .cloned()
        .collect();
}

/// A stored message: its stream sequence, subject, headers and payload.
struct Stored {
    sequence: u64,
    subject: String,
    headers: Option<async_nats::HeaderMap>,
    payload: bytes::Bytes,
}

/// Reads a stream from its start, as far as it goes at each call.
struct Reader {
    stream: jetstream::stream::Stream,
    messages: consumer::pull::Ordered,
    last: u64,
}

impl Reader {
    async fn new(jetstream: &jetstream::Context, name: &str) -> Self {
        let stream = jetstream.get_stream(name).await.expect("the stream");
        let messages = stream
            .create_consumer(consumer::pull::OrderedConfig::default())
            .await
            .expect("an ordered consumer")
            .messages()
            .await
            .expect("its messages");
        Self {
            stream,
            messages,
            last: 0,
        }
    }

    /// The messages stored since the last call, up to the stream's last one now.
    async fn read_on(&mut self) -> Vec<Stored> {
        let last = match self.stream.info().await {
            Ok(info) => info.state.last_sequence,
            Err(_) => return Vec::new(),
        };
        let mut read = Vec::new();
        while self.last < last {
            let next = tokio::time::timeout(Duration::from_secs(5), self.messages.next()).await;
            let Ok(Some(Ok(message))) = next else {
                break;
            };
            let Ok(info) = message.info() else {
                continue;
            };
            self.last = info.stream_sequence;
            read.push(Stored {
                sequence: info.stream_sequence,
                subject: message.subject.to_string(),
                headers: message.headers.clone(),
                payload: message.payload.clone(),
            });
        }
        read
    }
}

/// `fluxgate_ingest_requests_total`, summed by outcome.
fn ingest_outcomes(metrics: &str) -> BTreeMap<String, u64> {
    let mut by_outcome = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("fluxgate_ingest_requests_total{") else {
            continue;
        };
        let outcome = rest
            .split("outcome=\"")
            .nth(1)
            .and_then(|o| o.split('"').next());
        let count = rest.rsplit(' ').next().and_then(|c| c.parse::<u64>().ok());
        if let (Some(outcome), Some(count)) = (outcome, count) {
            *by_outcome.entry(outcome.to_owned()).or_default() += count;
        }
    }
    by_outcome
}

impl Report {
    /// Every delivery answered 2xx reached a terminal outcome, and so did every stored one.
    pub fn nothing_lost(&self) -> bool {
        self.lost.is_empty() && self.terminal == self.stored && self.stored >= self.accepted
    }

    /// The samples of process `p` taken while the same process ran (after the last restart
    /// for the dispatcher and nats-server), skipping a tenth of the run after its start as
    /// warm-up (a restarted dispatcher first drains the backlog of its predecessor).
    fn steady(&self, p: usize) -> Vec<(f64, f64)> {
        let restarted = match PROCESSES[p] {
            "dispatcher" => self.event_at("new dispatcher started"),
            "nats-server" => self.event_at("nats-server accepting clients"),
            _ => None,
        };
        let from = restarted.unwrap_or_default() + self.duration / 10;
        (self.samples.iter())
            .filter(|s| s.at >= from && s.at <= self.duration)
            .map(|s| {
                (
                    s.at.as_secs_f64() / 60.0,
                    s.usage[p].rss_kib as f64 / 1024.0,
                )
            })
            .collect()
    }

    fn event_at(&self, what: &str) -> Option<Duration> {
        self.events
            .iter()
            .find(|(_, e)| e == what)
            .map(|(at, _)| *at)
    }

    /// The least-squares slope of process `p`'s RSS over its steady samples, in MiB a minute.
    pub fn rss_trend(&self, p: usize) -> f64 {
        let points = self.steady(p);
        let n = points.len() as f64;
        if n < 2.0 {
            return 0.0;
        }
        let (mx, my) = (
            points.iter().map(|p| p.0).sum::<f64>() / n,
            points.iter().map(|p| p.1).sum::<f64>() / n,
        );
        let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
        if sxx == 0.0 { 0.0 } else { sxy / sxx }
    }

    /// Process `p`'s open files: at the first steady sample, the most, and at the end.
    pub fn fds(&self, p: usize) -> (usize, usize, usize) {
        let first = self.samples.first().map_or(0, |s| s.usage[p].fds);
        let most = self.samples.iter().map(|s| s.usage[p].fds).max();
        let last = self.samples.last().map_or(0, |s| s.usage[p].fds);
        (first, most.unwrap_or(0), last)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "soak of {:.0?}", self.duration)?;
        for (at, event) in &self.events {
            writeln!(f, "  at {:>6.1} s: {event}", at.as_secs_f64())?;
        }
        writeln!(f, "answers by request kind:")?;
        for (kind, answers) in &self.answers {
            let total: usize = answers.values().sum();
            let list: Vec<String> = answers.iter().map(|(a, n)| format!("{a}: {n}")).collect();
            writeln!(f, "  {:<13} {total:>7}  {}", kind.label(), list.join(", "))?;
        }
        let counted: Vec<String> = (self.ingest_outcomes.iter())
            .map(|(o, n)| format!("{o}: {n}"))
            .collect();
        writeln!(f, "ingest's count by outcome: {}", counted.join(", "))?;
        writeln!(
            f,
            "deliveries answered 2xx (stored): {}; stored: {} ({} stored though their answer was not 2xx); with a terminal outcome: {}; lost: {}",
            self.accepted,
            self.stored,
            self.stored.saturating_sub(self.accepted),
            self.terminal,
            self.lost.len()
        )?;
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(o, n)| format!("{o}: {n}"))
            .collect();
        writeln!(f, "outcome events: {}", outcomes.join(", "))?;
        writeln!(f, "RSS (MiB) and open files over time:")?;
        write!(f, "  {:>8}", "seconds")?;
        for name in PROCESSES {
            write!(f, " {name:>12} {:>5}", "fds")?;
        }
        writeln!(f)?;
        let step = (self.samples.len() / 20).max(1);
        let last = self.samples.len().saturating_sub(1);
        for (i, sample) in self.samples.iter().enumerate() {
            if i % step != 0 && i != last {
                continue;
            }
            write!(f, "  {:>8.0}", sample.at.as_secs_f64())?;
            for usage in sample.usage {
                write!(
                    f,
                    " {:>12.1} {:>5}",
                    usage.rss_kib as f64 / 1024.0,
                    usage.fds
                )?;
            }
            writeln!(f)?;
        }
        for (p, name) in PROCESSES.iter().enumerate() {
            let (first, most, last) = self.fds(p);
            writeln!(
                f,
                "{name}: RSS trend {:+.2} MiB/min over its steady samples; open files {first} at the start, {most} at most, {last} at the end",
                self.rss_trend(p)
            )?;
        }
        Ok(())
    }
}
