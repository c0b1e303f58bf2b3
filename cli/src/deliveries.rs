//! `fluxgate deliveries list|show`: what arrived, newest first, and one delivery's page --
//! metadata, kept headers, body and the timeline of its outcomes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use fluxgate_shared::contract::{self, DeliveryMeta};
use serde_json::{Value, json};

use crate::connect::NatsArgs;
use crate::error::Error;
use crate::history::{Filter, History, Status, Summary};
use crate::render::{self, Format};
use crate::{as_sequence, parse_receiver, parse_time};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Deliveries, newest first.
    List(ListArgs),
    /// One delivery: metadata, kept headers, body and the timeline of its outcomes.
    Show(ShowArgs),
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// Only this receiver (`namespace/name`).
    #[arg(long, value_parser = parse_receiver)]
    receiver: Option<(String, String)>,
    /// Only deliveries with this status.
    #[arg(long, value_enum)]
    status: Option<Status>,
    /// Only this event (case-insensitive), e.g. `push`.
    #[arg(long)]
    event: Option<String>,
    /// Stored since: a duration ago (`2h`) or an RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    since: Option<DateTime<Utc>>,
    /// Stored until: a duration ago or an RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    until: Option<DateTime<Utc>>,
    /// At most this many deliveries.
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// A delivery id, or `#<seq>` / a stream sequence number.
    delivery: String,
    /// Look for the id in this receiver only (`namespace/name`).
    #[arg(long, value_parser = parse_receiver)]
    receiver: Option<(String, String)>,
    /// Print the body exactly as received, and nothing else.
    #[arg(long)]
    raw: bool,
    /// Write the body, exactly as received, to this file.
    #[arg(long)]
    output_file: Option<PathBuf>,
    /// A link to the delivery's trace: a URL with `{trace_id}` in it, as Grafana Tempo's
    /// (`https://grafana.example/explore?...{trace_id}...`) or Jaeger's
    /// (`https://jaeger.example/trace/{trace_id}`).
    #[arg(long, env = "FLUXGATE_TRACE_URL")]
    trace_url: Option<String>,
}

pub async fn run(command: Command, format: Format) -> Result<(), Error> {
    match command {
        Command::List(args) => list(args, format).await,
        Command::Show(args) => show(args, format).await,
    }
}

async fn list(args: ListArgs, format: Format) -> Result<(), Error> {
    let history = History::new(args.nats.connect().await?);
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
        return render::structured(format, &rows);
    }
    let colour = std::io::stdout().is_terminal();
    let rows = summaries
        .iter()
        .map(|s| {
            let d = &s.delivery;
            vec![
                render::time(d.received_at.unwrap_or(d.stored_at)),
                d.receiver.clone(),
                render::inert(d.event.as_deref().unwrap_or("-")).into_owned(),
                match d.replay_of {
                    Some(of) => format!("{} (replay of #{of})", render::inert(&d.id)),
                    None => render::inert(&d.id).into_owned(),
                },
                format!("#{}", d.seq),
                render::status(s.status, colour),
                s.targets.to_string(),
                s.latency_ms.map_or("-".into(), |ms| format!("{ms} ms")),
            ]
        })
        .collect();
    render::table(
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

async fn show(args: ShowArgs, format: Format) -> Result<(), Error> {
    let streams = args.nats.connect().await?;
    let history = History::new(streams.clone());
    // An id names its first stored copy; its replays (and any copy stored again later) are
    // listed on its page.
    let (seq, copies) = match as_sequence(&args.delivery) {
        Some(seq) => (seq, Vec::new()),
        None => {
            let found = history.find(&args.delivery, args.receiver.as_ref()).await?;
            let Some((&first, later)) = found.split_first() else {
                return Err(Error::NotFound(format!(
                    "no delivery {:?} in the stream: it never arrived, or it has aged out (see the stream's max age)",
                    args.delivery
                )));
            };
            (first, later.to_vec())
        }
    };
    let (summary, payload) = history.by_seq(seq).await?;
    let mut later = Vec::with_capacity(copies.len());
    for copy in copies {
        later.push(history.by_seq(copy).await?.0);
    }
    let meta = DeliveryMeta::read(&summary.delivery.subject, Some(&summary.delivery.headers))?;
    let body = meta.body(&streams.jetstream, &payload).await?;
    if let Some(path) = &args.output_file {
        std::fs::write(path, &body)?;
    }
    if args.raw {
        use std::io::Write as _;
        std::io::stdout().write_all(&body)?;
        return Ok(());
    }
    let trace = trace_of(&meta, args.trace_url.as_deref());
    match format {
        Format::Table => {
            let colour = std::io::stdout().is_terminal();
            print!("{}", page(&summary, &meta, &body, trace, colour));
            print!("{}", copies_section(&later, colour));
        }
        _ => {
            let mut value = serde_json::to_value(&summary).unwrap_or_default();
            value["headers"] = headers_json(&summary, &meta);
            value["metadata"] = serde_json::to_value(&meta).unwrap_or_default();
            if let Some(trace) = trace {
                value["trace_id"] = json!(trace.id);
                value["trace_url"] = json!(trace.url);
            }
            value["body"] = serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
            value["replays"] = later.iter().map(row_json).collect();
            render::structured(format, &value)?;
        }
    }
    Ok(())
}

/// The later copies of a delivery (its replays, or the same id stored again), one per line.
fn copies_section(copies: &[Summary], colour: bool) -> String {
    let mut out = String::new();
    if copies.is_empty() {
        return out;
    }
    let _ = writeln!(out, "Replays:");
    for copy in copies {
        let d = &copy.delivery;
        let what = match (d.replay_of, &d.replay_actor) {
            (Some(of), Some(actor)) => format!("replay of #{of} by {}", render::inert(actor)),
            (Some(of), None) => format!("replay of #{of}"),
            (None, _) => "stored again".to_owned(),
        };
        let _ = writeln!(
            out,
            "  #{}  {}  {what}  {}",
            d.seq,
            render::time(d.received_at.unwrap_or(d.stored_at)),
            render::status(copy.status, colour)
        );
    }
    out
}

/// The headers stored with the delivery: the request's kept headers, and the message's own
/// (its id, `traceparent`) without the metadata and those a direct get adds about the message.
fn headers_json(summary: &Summary, meta: &DeliveryMeta) -> Value {
    const ABOUT_THE_MESSAGE: &[&str] = &[
        contract::header::DELIVERY,
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
    for (name, value) in &meta.request_headers {
        headers.insert(name.clone(), value.clone());
    }
    json!(headers)
}

/// A delivery's trace: its id, and a link when a URL template is given.
struct Trace {
    id: String,
    url: Option<String>,
}

/// The trace id of the delivery's W3C `traceparent` (the sender's, or ingest's request span).
fn trace_of(meta: &DeliveryMeta, url_template: Option<&str>) -> Option<Trace> {
    let id = meta.traceparent.as_deref()?.split('-').nth(1)?;
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(Trace {
        id: id.to_owned(),
        url: url_template.map(|template| template.replace("{trace_id}", id)),
    })
}

/// The human-readable page of one delivery.
fn page(
    summary: &Summary,
    meta: &DeliveryMeta,
    body: &[u8],
    trace: Option<Trace>,
    colour: bool,
) -> String {
    let d = &summary.delivery;
    let mut out = String::new();
    let _ = writeln!(out, "Delivery {} (#{})", render::inert(&d.id), d.seq);
    let _ = writeln!(out, "  Receiver:  {} ({})", d.receiver, d.receiver_type);
    let event = d.event.as_deref().unwrap_or("-");
    let _ = writeln!(out, "  Event:     {}", render::inert(event));
    if let Some(received) = d.received_at {
        let _ = writeln!(out, "  Received:  {}", render::time(received));
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
        render::status(summary.status, colour),
        summary.targets,
        if summary.targets == 1 { "" } else { "s" }
    );
    if let Some(trace) = trace {
        let url = trace.url.map_or(String::new(), |url| format!("  {url}"));
        let _ = writeln!(out, "  Trace:     {}{url}", trace.id);
    }
    let _ = writeln!(out, "Headers:");
    if let Some(headers) = headers_json(summary, meta).as_object() {
        for (name, value) in headers {
            let value = render::inert(value.as_str().unwrap_or_default());
            let _ = writeln!(out, "  {name}: {value}");
        }
    }
    let mut about = vec![format!("{} bytes", body.len())];
    if let Some(content_type) = &meta.content_type {
        about.push(render::inert(content_type).to_string());
    }
    if let Some(sha256) = &meta.body_sha256 {
        about.push(format!("sha256 {}", render::inert(sha256)));
    }
    let _ = writeln!(out, "Body ({}):", about.join(", "));
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(json) => serde_json::to_string_pretty(&json).unwrap_or_default(),
        Err(_) => render::inert_text(&String::from_utf8_lossy(body)).into_owned(),
    };
    for line in text.lines() {
        let _ = writeln!(out, "  {line}");
    }
    let _ = writeln!(out, "Timeline:");
    let _ = writeln!(out, "  {}  stored", render::time(d.stored_at));
    for outcome in &summary.outcomes {
        let _ = writeln!(
            out,
            "  {}  {}{}",
            render::outcome_time(outcome),
            outcome.event.label(),
            render::event_details(&outcome.event)
        );
    }
    out
}
