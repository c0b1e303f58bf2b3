//! The `fluxgate` command line: delivery history and receivers, read from the streams and the
//! receiver catalog, printed as a table (colour on a terminal only), JSON or YAML.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::path::PathBuf;

use async_nats::jetstream;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use fluxgate_shared::catalog::{Catalog, Receiver};
use fluxgate_shared::cluster;
use futures::StreamExt as _;
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::Error;
use crate::history::{Filter, History, Status, Summary};
use crate::replay::Replayer;
use crate::request;
use crate::targets::{Resolver, Target};

#[derive(Debug, Parser)]
#[command(
    name = "fluxgate",
    version,
    about = "See and replay the webhooks fluxgate stored"
)]
pub struct Cli {
    /// NATS server URL(s), comma-separated.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    pub nats_url: String,

    /// How to print results.
    #[arg(short, long, value_enum, default_value = "table", global = true)]
    pub output: Format,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// What arrived and what became of it.
    #[command(subcommand)]
    Deliveries(Deliveries),
    /// The receivers and their webhook URLs.
    #[command(subcommand)]
    Receivers(Receivers),
    /// Publish deliveries again, on purpose: by id, or every one matching the filters.
    Replay(ReplayArgs),
    /// Follow deliveries and their outcomes live, as they happen.
    Tail(TailArgs),
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Only this receiver (`namespace/name`).
    #[arg(long, value_parser = parse_receiver)]
    pub receiver: Option<(String, String)>,
}

#[derive(Debug, Subcommand)]
pub enum Deliveries {
    /// Deliveries, newest first.
    List(ListArgs),
    /// One delivery: metadata, kept headers, body and the timeline of its outcomes.
    Show(ShowArgs),
}

#[derive(Debug, Subcommand)]
pub enum Receivers {
    /// Each receiver with its type, events, targets, webhook URL and whether it is served.
    List(ReceiversArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this receiver (`namespace/name`).
    #[arg(long, value_parser = parse_receiver)]
    pub receiver: Option<(String, String)>,
    #[arg(long, value_enum)]
    pub status: Option<Status>,
    /// Only this event (case-insensitive), e.g. `push`.
    #[arg(long)]
    pub event: Option<String>,
    /// Stored since: a duration ago (`2h`) or an RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Stored until: a duration ago or an RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A delivery id, or `#<seq>` / a stream sequence number.
    pub delivery: String,
    /// Look for the id in this receiver only (`namespace/name`).
    #[arg(long, value_parser = parse_receiver)]
    pub receiver: Option<(String, String)>,
    /// Print the body exactly as received, and nothing else.
    #[arg(long)]
    pub raw: bool,
    /// Write the body, exactly as received, to this file.
    #[arg(long)]
    pub output_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReceiversArgs {
    /// Read receivers from this file instead of the cluster.
    #[arg(long, env = "FLUXGATE_RECEIVERS_FILE")]
    pub receivers_file: Option<PathBuf>,
    /// Only Receivers in this namespace (from the cluster).
    #[arg(long, env = "FLUXGATE_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Public base URL of fluxgate-ingest, for the webhook URLs.
    #[arg(
        long,
        env = "FLUXGATE_BASE_URL",
        default_value = "http://127.0.0.1:9292"
    )]
    pub base_url: String,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Delivery ids, or `#<seq>` stream sequences; without any, the filters choose.
    pub deliveries: Vec<String>,
    /// Replay the deliveries of this receiver (`namespace/name`).
    #[arg(long, value_parser = parse_receiver)]
    pub receiver: Option<(String, String)>,
    /// Replay deliveries stored since: a duration ago (`2h`) or an RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Replay deliveries with this status, e.g. `failed`.
    #[arg(long, value_enum)]
    pub status: Option<Status>,
    /// Show which targets each would be dispatched to now, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Replays per second at most.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Do not ask before replaying more than `--confirm-above` deliveries.
    #[arg(short, long)]
    pub yes: bool,
    #[arg(long, default_value_t = 10)]
    pub confirm_above: usize,
    /// Who replays, recorded on the original (default: the OS user).
    #[arg(long)]
    pub actor: Option<String>,
    /// For `--dry-run`: receivers from this file instead of the cluster.
    #[arg(long, env = "FLUXGATE_RECEIVERS_FILE")]
    pub receivers_file: Option<PathBuf>,
    /// For `--dry-run`: refuse targets in other namespaces, as the dispatcher does with it.
    #[arg(long, env = "FLUXGATE_NO_CROSS_NAMESPACE_REFS")]
    pub no_cross_namespace_refs: bool,
}

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

/// Runs one command, printing to stdout.
pub async fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Deliveries(Deliveries::List(args)) => list(&cli.nats_url, cli.output, args).await,
        Command::Deliveries(Deliveries::Show(args)) => show(&cli.nats_url, cli.output, args).await,
        Command::Receivers(Receivers::List(args)) => receivers(cli.output, args).await,
        Command::Replay(args) => replay(&cli.nats_url, cli.output, args).await,
        Command::Tail(args) => tail(&cli.nats_url, cli.output, args).await,
    }
}

/// Prints each new delivery and outcome as it is stored, until interrupted.
async fn tail(url: &str, format: Format, args: TailArgs) -> Result<(), Error> {
    let jetstream = jetstream(url).await?;
    let filter = Filter {
        receiver: args.receiver,
        ..Default::default()
    };
    let (deliveries, outcomes) = History::new(jetstream).follow(&filter).await?;
    eprintln!("following deliveries and outcomes; Ctrl-C to stop");
    let mut deliveries = std::pin::pin!(deliveries);
    let mut outcomes = std::pin::pin!(outcomes);
    let colour = std::io::stdout().is_terminal();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            Some(delivery) = deliveries.next() => {
                let delivery = delivery?;
                match format {
                    Format::Table => println!(
                        "{}  {:<12} {}  {}  {} #{}",
                        time(delivery.stored_at),
                        "stored",
                        delivery.receiver,
                        delivery.event.as_deref().unwrap_or("-"),
                        delivery.id,
                        delivery.seq
                    ),
                    _ => print_line(format, &json!({"kind": "delivery", "delivery": delivery}))?,
                }
            }
            Some(event) = outcomes.next() => {
                let event = event?;
                match format {
                    Format::Table => {
                        let kind = event["type"].as_str().unwrap_or_default();
                        let shown = if colour && kind == "failed" { paint(Status::Failed, true) } else { kind.to_owned() };
                        println!(
                            "{}  {:<12} {}  {} #{}  {}",
                            event_time(&event),
                            shown,
                            event["receiver"].as_str().unwrap_or_default(),
                            event["delivery"].as_str().unwrap_or_default(),
                            event["seq"],
                            timeline_line(&event).trim_start_matches(kind).trim()
                        )
                    }
                    _ => print_line(format, &json!({"kind": "outcome", "outcome": event}))?,
                }
            }
            else => return Ok(()),
        }
    }
}

/// One JSON object per line (YAML documents separated by `---`), for following live.
fn print_line(format: Format, value: &Value) -> Result<(), Error> {
    match format {
        Format::Yaml => print_structured(format, value).map(|()| println!("---")),
        _ => {
            println!("{value}");
            Ok(())
        }
    }
}

async fn jetstream(url: &str) -> Result<jetstream::Context, Error> {
    let client = async_nats::connect(url)
        .await
        .map_err(|e| Error::Nats(format!("cannot connect to {url}: {e}")))?;
    Ok(jetstream::new(client))
}

async fn list(url: &str, format: Format, args: ListArgs) -> Result<(), Error> {
    let history = History::new(jetstream(url).await?);
    let filter = Filter {
        receiver: args.receiver,
        status: args.status,
        event: args.event,
        since: args.since,
        until: args.until,
        limit: args.limit,
    };
    let summaries = history.list(&filter).await?;
    if format != Format::Table {
        let rows: Vec<Value> = summaries.iter().map(row_json).collect();
        return print_structured(format, &rows);
    }
    let colour = std::io::stdout().is_terminal();
    let rows = summaries
        .iter()
        .map(|s| {
            let d = &s.delivery;
            vec![
                time(d.received_at.unwrap_or(d.stored_at)),
                d.receiver.clone(),
                d.event.clone().unwrap_or_else(|| "-".into()),
                match d.replay_of {
                    Some(of) => format!("{} (replay of #{of})", d.id),
                    None => d.id.clone(),
                },
                format!("#{}", d.seq),
                paint(s.status, colour),
                s.targets.to_string(),
                s.latency_ms.map_or("-".into(), |ms| format!("{ms} ms")),
            ]
        })
        .collect();
    print_table(
        &[
            "TIME", "RECEIVER", "EVENT", "DELIVERY", "SEQ", "STATUS", "TARGETS", "LATENCY",
        ],
        rows,
    );
    Ok(())
}

/// A listed delivery, without its outcome trail.
fn row_json(summary: &Summary) -> Value {
    let mut value = serde_json::to_value(summary).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.remove("outcomes");
    }
    value
}

async fn show(url: &str, format: Format, args: ShowArgs) -> Result<(), Error> {
    let jetstream = jetstream(url).await?;
    let history = History::new(jetstream.clone());
    let by_seq = args.delivery.trim_start_matches('#').parse::<u64>().ok();
    let seqs = match by_seq {
        Some(seq) => vec![seq],
        None => {
            let found = history.find(&args.delivery, args.receiver.as_ref()).await?;
            if found.is_empty() {
                return Err(Error::NotFound(format!(
                    "no delivery {:?} in the stream: it never arrived, or it has aged out (see the stream's max age)",
                    args.delivery
                )));
            }
            found
        }
    };
    for seq in seqs {
        let (summary, payload) = history.by_seq(seq).await?;
        let body = request::body(&jetstream, Some(&summary.delivery.headers), &payload).await?;
        if let Some(path) = &args.output_file {
            std::fs::write(path, &body)?;
        }
        if args.raw {
            use std::io::Write as _;
            std::io::stdout().write_all(&body)?;
            continue;
        }
        match format {
            Format::Table => print!(
                "{}",
                describe(&summary, &body, std::io::stdout().is_terminal())
            ),
            _ => {
                let mut value = serde_json::to_value(&summary).unwrap_or_default();
                value["headers"] = headers_json(&summary);
                value["body"] = serde_json::from_slice(&body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
                print_structured(format, &value)?;
            }
        }
    }
    Ok(())
}

/// The headers stored with the delivery (without those a direct get adds about the message).
fn headers_json(summary: &Summary) -> Value {
    const ABOUT_THE_MESSAGE: &[&str] = &[
        "Nats-Stream",
        "Nats-Sequence",
        "Nats-Subject",
        "Nats-Time-Stamp",
        "Nats-Last-Sequence",
        "Nats-Num-Pending",
    ];
    let mut headers = BTreeMap::new();
    for (name, values) in summary.delivery.headers.iter() {
        if ABOUT_THE_MESSAGE
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name.as_ref()))
        {
            continue;
        }
        let joined: Vec<&str> = values.iter().map(|v| v.as_str()).collect();
        headers.insert(name.to_string(), joined.join(", "));
    }
    json!(headers)
}

/// The human-readable page of one delivery.
fn describe(summary: &Summary, body: &[u8], colour: bool) -> String {
    let d = &summary.delivery;
    let mut out = String::new();
    let _ = writeln!(out, "Delivery {} (#{})", d.id, d.seq);
    let _ = writeln!(out, "  Receiver:  {} ({})", d.receiver, d.receiver_type);
    let _ = writeln!(out, "  Event:     {}", d.event.as_deref().unwrap_or("-"));
    if let Some(received) = d.received_at {
        let _ = writeln!(out, "  Received:  {}", time(received));
    }
    if let Some(of) = d.replay_of {
        let _ = writeln!(out, "  Replay of: #{of}");
    }
    let latency = summary
        .latency_ms
        .map_or(String::new(), |ms| format!(", {ms} ms"));
    let _ = writeln!(
        out,
        "  Status:    {} ({} target{}{latency})",
        paint(summary.status, colour),
        summary.targets,
        if summary.targets == 1 { "" } else { "s" }
    );
    let _ = writeln!(out, "Headers:");
    if let Some(headers) = headers_json(summary).as_object() {
        for (name, value) in headers {
            let _ = writeln!(out, "  {name}: {}", value.as_str().unwrap_or_default());
        }
    }
    let _ = writeln!(out, "Body ({} bytes):", body.len());
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(json) => serde_json::to_string_pretty(&json).unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    for line in text.lines() {
        let _ = writeln!(out, "  {line}");
    }
    let _ = writeln!(out, "Timeline:");
    let _ = writeln!(out, "  {}  stored", time(d.stored_at));
    for event in &summary.outcomes {
        let _ = writeln!(out, "  {}  {}", event_time(event), timeline_line(event));
    }
    out
}

/// One outcome event as a line: its type, its target and what else it says.
fn timeline_line(event: &Value) -> String {
    let target = |t: &Value| {
        format!(
            "{} {}/{}",
            t["kind"].as_str().unwrap_or_default(),
            t["namespace"].as_str().unwrap_or_default(),
            t["name"].as_str().unwrap_or_default()
        )
    };
    let mut line = event["type"].as_str().unwrap_or_default().to_owned();
    if let Some(t) = event.get("target") {
        let _ = write!(line, " {}", target(t));
    }
    if let Some(targets) = event["targets"].as_array() {
        let names: Vec<String> = targets.iter().map(target).collect();
        let _ = write!(line, " [{}]", names.join(", "));
    }
    for field in [
        "requested_at",
        "attempts",
        "attempt",
        "error",
        "reason",
        "of_seq",
        "replay_seq",
        "actor",
        "handled_at",
        "latency_ms",
    ] {
        if let Some(value) = event.get(field) {
            let value = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            let _ = write!(line, " {field}={value}");
        }
    }
    line
}

/// The sequences to replay: those named, else those the filters select, oldest first.
async fn selection(history: &History, args: &ReplayArgs) -> Result<Vec<u64>, Error> {
    let mut seqs = Vec::new();
    for delivery in &args.deliveries {
        match delivery.trim_start_matches('#').parse::<u64>() {
            Ok(seq) => seqs.push(seq),
            Err(_) => {
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

async fn replay(url: &str, format: Format, args: ReplayArgs) -> Result<(), Error> {
    let jetstream = jetstream(url).await?;
    let history = History::new(jetstream.clone());
    let seqs = selection(&history, &args).await?;
    let actor = args.actor.clone().unwrap_or_else(os_user);
    let replayer = Replayer::new(jetstream, actor).await?;
    if args.dry_run {
        return plan(&replayer, format, &args, &seqs).await;
    }
    if seqs.len() > args.confirm_above && !args.yes && !confirm(seqs.len())? {
        return Err(Error::Usage("nothing replayed".into()));
    }
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
        let replayed = replayer.replay(seq).await?;
        progress.inc(1);
        if format == Format::Table {
            progress.suspend(|| {
                println!(
                    "replayed {} (#{}) as #{}",
                    replayed.delivery, replayed.seq, replayed.replay_seq
                )
            });
        }
        done.push(replayed);
    }
    progress.finish_and_clear();
    if format != Format::Table {
        print_structured(format, &done)?;
    }
    Ok(())
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

fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// What each delivery would be dispatched to now.
#[derive(Serialize)]
struct Plan {
    delivery: String,
    seq: u64,
    targets: Vec<Target>,
    filtered_out: Vec<Target>,
    refused: Vec<String>,
}

async fn plan(
    replayer: &Replayer,
    format: Format,
    args: &ReplayArgs,
    seqs: &[u64],
) -> Result<(), Error> {
    let client = kube::Client::try_default().await?;
    let catalog = match &args.receivers_file {
        Some(path) => Catalog::load_file(path)?,
        None => {
            let settings = cluster::Settings {
                namespace: None,
                read_secrets: false,
                secret_refresh: std::time::Duration::ZERO,
            };
            cluster::list(client.clone(), &settings).await?.0
        }
    };
    let resolver = Resolver::new(client, args.no_cross_namespace_refs);
    let mut plans = Vec::with_capacity(seqs.len());
    for &seq in seqs {
        let (delivery, resolved) = replayer.plan(&catalog, &resolver, seq).await?;
        plans.push(Plan {
            delivery,
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
        return print_structured(format, &plans);
    }
    for p in &plans {
        println!(
            "would replay {} (#{}): nothing is published (--dry-run)",
            p.delivery, p.seq
        );
        for t in &p.targets {
            println!("  would annotate  {t}");
        }
        for t in &p.filtered_out {
            println!("  filtered out    {t}");
        }
        for r in &p.refused {
            println!("  would fail      {r}");
        }
    }
    Ok(())
}

/// A receiver as listed.
#[derive(Serialize)]
struct ReceiverRow {
    receiver: String,
    #[serde(rename = "type")]
    kind: String,
    events: Vec<String>,
    targets: Vec<String>,
    url: Option<String>,
    served: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

async fn receivers(format: Format, args: ReceiversArgs) -> Result<(), Error> {
    let (catalog, left_out) = match &args.receivers_file {
        Some(path) => (Catalog::load_file(path)?, BTreeMap::new()),
        None => {
            let client = kube::Client::try_default().await?;
            let settings = cluster::Settings {
                namespace: args.watch_namespace.clone(),
                read_secrets: true,
                secret_refresh: std::time::Duration::ZERO,
            };
            cluster::list(client, &settings).await?
        }
    };
    let base = args.base_url.trim_end_matches('/');
    let mut rows: Vec<ReceiverRow> = catalog.receivers().map(|r| receiver_row(r, base)).collect();
    rows.extend(left_out.into_iter().map(|(receiver, reason)| ReceiverRow {
        receiver,
        kind: "-".into(),
        events: vec![],
        targets: vec![],
        url: None,
        served: false,
        reason: Some(reason),
    }));
    rows.sort_by(|a, b| a.receiver.cmp(&b.receiver));
    if format != Format::Table {
        return print_structured(format, &rows);
    }
    let table = rows
        .iter()
        .map(|r| {
            vec![
                r.receiver.clone(),
                r.kind.clone(),
                if r.events.is_empty() {
                    "*".into()
                } else {
                    r.events.join(",")
                },
                r.targets.join(", "),
                r.url.clone().unwrap_or_else(|| "-".into()),
                r.reason
                    .as_ref()
                    .map_or_else(|| "yes".into(), |reason| format!("no: {reason}")),
            ]
        })
        .collect();
    print_table(
        &["RECEIVER", "TYPE", "EVENTS", "TARGETS", "URL", "SERVED"],
        table,
    );
    Ok(())
}

fn receiver_row(receiver: &Receiver, base: &str) -> ReceiverRow {
    let reason = if receiver.suspend {
        Some("suspended".to_owned())
    } else {
        receiver
            .not_ready
            .clone()
            .map(|r| format!("not ready: {r}"))
    };
    ReceiverRow {
        receiver: format!("{}/{}", receiver.namespace, receiver.name),
        kind: receiver.kind.as_str().into(),
        events: receiver.events.clone(),
        targets: receiver
            .resources
            .iter()
            .map(|r| {
                let namespace = r
                    .namespace
                    .clone()
                    .unwrap_or_else(|| receiver.namespace.clone());
                format!("{} {namespace}/{}", r.kind, r.name)
            })
            .collect(),
        url: Some(format!("{base}{}", receiver.hook_path)),
        served: reason.is_none(),
        reason,
    }
}

/// An outcome event's time, as the other times are printed.
fn event_time(event: &Value) -> String {
    event["at"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or_else(|| "-".into(), |t| time(t.with_timezone(&Utc)))
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn paint(status: Status, colour: bool) -> String {
    let code = match status {
        Status::Patched | Status::Handled => "32",
        Status::Failed => "31",
        Status::Retrying | Status::NotHandled => "33",
        Status::Accepted | Status::Duplicate => "2",
    };
    if colour {
        format!("\u{1b}[{code}m{}\u{1b}[0m", status.as_str())
    } else {
        status.as_str().to_owned()
    }
}

fn print_structured<T: Serialize + ?Sized>(format: Format, value: &T) -> Result<(), Error> {
    let text = match format {
        Format::Yaml => {
            serde_yaml_ng::to_string(value).map_err(|e| Error::Output(e.to_string()))?
        }
        _ => serde_json::to_string_pretty(value).map_err(|e| Error::Output(e.to_string()))? + "\n",
    };
    print!("{text}");
    Ok(())
}

/// Columns padded to their widest cell (colour codes do not count).
fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let visible = |s: &str| {
        let mut n = 0;
        let mut escape = false;
        for c in s.chars() {
            match (escape, c) {
                (false, '\u{1b}') => escape = true,
                (true, 'm') => escape = false,
                (false, _) => n += 1,
                _ => {}
            }
        }
        n
    };
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(visible(cell));
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(visible(cell));
            let _ = write!(
                out,
                "{cell}{}",
                if i + 1 < cells.len() {
                    " ".repeat(pad + 2)
                } else {
                    String::new()
                }
            );
        }
        println!("{out}");
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row);
    }
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
    fn colour_codes_do_not_count_as_width_and_only_appear_when_asked() {
        assert_eq!(paint(Status::Failed, false), "failed");
        assert_eq!(paint(Status::Failed, true), "\u{1b}[31mfailed\u{1b}[0m");
    }
}
