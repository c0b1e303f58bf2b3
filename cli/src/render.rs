//! Output, in one place: tables (colour on a terminal only), JSON and YAML, times, statuses and
//! an outcome event as one line of a timeline.

use std::borrow::Cow;
use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use fluxgate_shared::contract::{Event, Outcome, Target};
use serde::Serialize;

use crate::error::Error;
use crate::history::Status;

/// How to print results (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// A value as pretty JSON or as YAML.
pub fn structured<T: Serialize + ?Sized>(format: Format, value: &T) -> Result<(), Error> {
    let text = match format {
        Format::Yaml => {
            serde_yaml_ng::to_string(value).map_err(|e| Error::Output(e.to_string()))?
        }
        _ => serde_json::to_string_pretty(value).map_err(|e| Error::Output(e.to_string()))? + "\n",
    };
    print!("{text}");
    Ok(())
}

/// One JSON object per line (YAML documents separated by `---`), for following live.
pub fn line<T: Serialize + ?Sized>(format: Format, value: &T) -> Result<(), Error> {
    match format {
        Format::Yaml => structured(format, value).map(|()| println!("---")),
        _ => {
            let text = serde_json::to_string(value).map_err(|e| Error::Output(e.to_string()))?;
            println!("{text}");
            Ok(())
        }
    }
}

/// Columns padded to their widest cell (colour codes do not count).
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(visible_width(cell));
        }
    }
    let print_row = |cells: Vec<String>| {
        let mut out = String::new();
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths[i].saturating_sub(visible_width(cell));
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        println!("{out}");
    };
    print_row(headers.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        print_row(row);
    }
}

/// Characters a terminal shows: ANSI colour sequences take no room.
fn visible_width(s: &str) -> usize {
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
}

/// A value from a sender (a delivery id, an event name, a header), made inert for a terminal:
/// every control character is shown as an escape (`\u{1b}`), so an id holding an escape
/// sequence cannot retitle, recolour or rewrite the operator's terminal, nor a line break fake
/// a line of output.
pub fn inert(value: &str) -> Cow<'_, str> {
    escape_controls(value, false)
}

/// A sender's text (a body that is not JSON), made inert: as [`inert`], keeping line breaks
/// and tabs.
pub fn inert_text(text: &str) -> Cow<'_, str> {
    escape_controls(text, true)
}

fn escape_controls(value: &str, keep_layout: bool) -> Cow<'_, str> {
    let harmful = |c: char| c.is_control() && !(keep_layout && matches!(c, '\n' | '\t'));
    if !value.chars().any(harmful) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if harmful(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// An outcome event's time, as the other times are printed.
pub fn outcome_time(outcome: &Outcome) -> String {
    outcome.time().map_or_else(|| "-".into(), time)
}

/// A status, coloured when printing to a terminal.
pub fn status(status: Status, colour: bool) -> String {
    let code = match status {
        Status::Patched | Status::Handled => "32",
        Status::Failed => "31",
        Status::Retrying | Status::NotHandled => "33",
        Status::Accepted | Status::Duplicate | Status::DryRun => "2",
    };
    if colour {
        format!("\u{1b}[{code}m{}\u{1b}[0m", status.as_str())
    } else {
        status.as_str().to_owned()
    }
}

/// What an outcome event says besides its type, as `field=value` words after its target(s).
pub fn event_details(event: &Event) -> String {
    let target = |t: &Target| format!("{} {}/{}", t.kind, t.namespace, t.name);
    let mut line = String::new();
    if let Some(t) = event.target() {
        let _ = write!(line, " {}", target(t));
    }
    let mut field = |name: &str, value: &dyn std::fmt::Display| {
        let _ = write!(line, " {name}={value}");
    };
    match event {
        Event::Dispatched { targets } => {
            let names: Vec<String> = targets.iter().map(target).collect();
            line = format!(" [{}]", names.join(", "));
        }
        Event::Duplicate { of_seq } => field("of_seq", of_seq),
        Event::Coalesced { batch, size, .. } => {
            field("batch", batch);
            field("size", size);
        }
        Event::Patched {
            requested_at,
            batch,
            size,
            attempts,
            ..
        } => {
            field("requested_at", requested_at);
            if *size > 1 {
                field("batch", batch);
                field("size", size);
            }
            field("attempts", attempts);
        }
        Event::Retrying {
            attempt,
            error,
            retry_in_ms,
            ..
        } => {
            field("attempt", attempt);
            field("error", error);
            field("retry_in_ms", retry_in_ms);
        }
        Event::Failed { reason, .. } | Event::NotHandled { reason, .. } => field("reason", reason),
        Event::Replayed { replay_seq, actor } => {
            field("replay_seq", replay_seq);
            field("actor", actor);
        }
        Event::Handled {
            handled_at,
            latency_ms,
            ..
        } => {
            field("handled_at", handled_at);
            if let Some(ms) = latency_ms {
                field("latency_ms", ms);
            }
        }
        Event::WouldPatch { .. } | Event::FilteredOut { .. } | Event::Unknown => {}
    }
    // Error texts and names in outcomes can carry what a sender wrote.
    inert(&line).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_from_senders_are_shown_escaped() {
        let title = "\u{1b}]0;pwned\u{7}\u{1b}[31mred\r\nfake line\u{9b}";
        assert_eq!(
            inert(title),
            "\\u{1b}]0;pwned\\u{7}\\u{1b}[31mred\\u{d}\\u{a}fake line\\u{9b}"
        );
        assert!(matches!(inert("d-0001 ok"), Cow::Borrowed(_)));
        assert_eq!(
            inert_text("line 1\n\tline 2\u{1b}[2J"),
            "line 1\n\tline 2\\u{1b}[2J"
        );
    }

    use super::*;

    #[test]
    fn colour_codes_only_appear_when_asked_and_take_no_width() {
        assert_eq!(status(Status::Failed, false), "failed");
        let painted = status(Status::Failed, true);
        assert_eq!(painted, "\u{1b}[31mfailed\u{1b}[0m");
        assert_eq!(visible_width(&painted), "failed".len());
    }

    #[test]
    fn a_timeline_line_names_the_target_and_the_fields() {
        let target = Target {
            api_version: "source.toolkit.fluxcd.io/v1".into(),
            kind: "GitRepository".into(),
            namespace: "flux-system".into(),
            name: "app".into(),
        };
        let retrying = Event::Retrying {
            target: target.clone(),
            attempt: 2,
            error: "503".into(),
            retry_in_ms: 400,
        };
        assert_eq!(
            event_details(&retrying),
            " GitRepository flux-system/app attempt=2 error=503 retry_in_ms=400"
        );
        let dispatched = Event::Dispatched {
            targets: vec![target],
        };
        assert_eq!(
            event_details(&dispatched),
            " [GitRepository flux-system/app]"
        );
    }
}
