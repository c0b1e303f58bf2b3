//! `fluxgate receivers list`: each receiver with its type, events, targets, webhook URL and
//! whether it is served (and why not), from a receivers file or the cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;

use fluxgate_shared::receivers::{Catalog, ClusterSettings, Receiver, list_cluster};
use serde::Serialize;

use crate::error::Error;
use crate::render::{self, Format};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Each receiver with its type, events, targets, webhook URL and whether it is served.
    List(ListArgs),
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Read receivers from this file instead of the cluster.
    #[arg(long, env = "FLUXGATE_RECEIVERS_FILE")]
    receivers_file: Option<PathBuf>,
    /// Only Receivers in this namespace (from the cluster).
    #[arg(long, env = "FLUXGATE_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Public base URL of fluxgate-ingest, for the webhook URLs.
    #[arg(
        long,
        env = "FLUXGATE_BASE_URL",
        default_value = "http://127.0.0.1:9292"
    )]
    base_url: String,
}

/// A receiver as listed.
#[derive(Serialize)]
struct Row {
    receiver: String,
    #[serde(rename = "type")]
    kind: String,
    events: Vec<String>,
    targets: Vec<String>,
    url: Option<String>,
    served: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// Served, but not safely.
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<&'static str>,
}

pub async fn run(command: Command, format: Format) -> Result<(), Error> {
    let Command::List(args) = command;
    let (catalog, left_out) = match &args.receivers_file {
        Some(path) => (Catalog::load_file(path)?, BTreeMap::new()),
        None => {
            let client = kube::Client::try_default().await?;
            let settings = ClusterSettings {
                namespace: args.watch_namespace.clone(),
                read_secrets: true,
                secrets_selector: None,
            };
            list_cluster(client, &settings).await?
        }
    };
    let base = args.base_url.trim_end_matches('/');
    let mut rows: Vec<Row> = catalog.receivers().map(|r| row(r, base)).collect();
    rows.extend(left_out.into_iter().map(|(receiver, reason)| Row {
        receiver,
        kind: "-".into(),
        events: vec![],
        targets: vec![],
        url: None,
        served: false,
        reason: Some(reason),
        warning: None,
    }));
    rows.sort_by(|a, b| a.receiver.cmp(&b.receiver));
    if format != Format::Table {
        return render::structured(format, &rows);
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
                match (&r.reason, r.warning) {
                    (Some(reason), _) => format!("no: {reason}"),
                    (None, Some(warning)) => format!("yes, but anyone can trigger it ({warning})"),
                    (None, None) => "yes".into(),
                },
            ]
        })
        .collect();
    render::table(
        &["RECEIVER", "TYPE", "EVENTS", "TARGETS", "URL", "SERVED"],
        table,
    );
    Ok(())
}

fn row(receiver: &Receiver, base: &str) -> Row {
    let reason = if receiver.suspend {
        Some("suspended".to_owned())
    } else {
        receiver
            .not_ready
            .clone()
            .map(|r| format!("not ready: {r}"))
    };
    Row {
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
        warning: receiver.open_to_anyone(),
    }
}
