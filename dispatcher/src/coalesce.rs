//! Coalescing: deliveries for the same target within the window become one patch. The window
//! opens with the first delivery, so none waits longer than the window plus the patch; those
//! arriving while a patch is in flight go into the next one. The `requestedAt` value is strictly
//! increasing per target.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::inflight::InFlight;
use crate::patch::Patcher;
use crate::targets::Target;

enum Command {
    Submit(Target, Arc<InFlight>),
    /// The window of the target's pending batch may have closed.
    Flush(Target),
    /// The target's patch finished.
    Done(Target),
}

#[derive(Default)]
struct Slot {
    pending: Vec<Arc<InFlight>>,
    opened: Option<Instant>,
    in_flight: bool,
    last_value: Option<DateTime<Utc>>,
}

/// Handle for submitting deliveries to the coalescer task.
#[derive(Clone)]
pub struct Coalescer {
    tx: mpsc::UnboundedSender<Command>,
}

impl Coalescer {
    /// Starts the coalescer task; patches go through `patcher`.
    pub fn spawn(window: Duration, patcher: Arc<Patcher>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(window, patcher, tx.clone(), rx));
        Self { tx }
    }

    /// Adds a delivery's target to the target's next patch.
    pub fn submit(&self, target: Target, delivery: Arc<InFlight>) {
        // The task lives as long as any handle; a send can only fail at exit.
        let _ = self.tx.send(Command::Submit(target, delivery));
    }
}

async fn run(
    window: Duration,
    patcher: Arc<Patcher>,
    tx: mpsc::UnboundedSender<Command>,
    mut rx: mpsc::UnboundedReceiver<Command>,
) {
    let mut slots: HashMap<Target, Slot> = HashMap::new();
    let schedule_flush = |target: Target, at: Instant| {
        let tx = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let _ = tx.send(Command::Flush(target));
        });
    };
    while let Some(command) = rx.recv().await {
        match command {
            Command::Submit(target, delivery) => {
                let slot = slots.entry(target.clone()).or_default();
                slot.pending.push(delivery);
                if slot.opened.is_none() {
                    let opened = Instant::now();
                    slot.opened = Some(opened);
                    if !slot.in_flight {
                        schedule_flush(target, opened + window);
                    }
                }
            }
            Command::Flush(target) => {
                let Some(slot) = slots.get_mut(&target) else {
                    continue;
                };
                let due = slot.opened.is_some_and(|o| o + window <= Instant::now());
                if due && !slot.in_flight {
                    start_batch(&target, slot, &patcher, &tx);
                }
            }
            Command::Done(target) => {
                let Some(slot) = slots.get_mut(&target) else {
                    continue;
                };
                slot.in_flight = false;
                match slot.opened {
                    Some(opened) if opened + window <= Instant::now() => {
                        start_batch(&target, slot, &patcher, &tx)
                    }
                    Some(opened) => schedule_flush(target, opened + window),
                    // Nothing waits: forget the target but keep its last value for monotonicity.
                    None => {}
                }
            }
        }
    }
}

fn start_batch(
    target: &Target,
    slot: &mut Slot,
    patcher: &Arc<Patcher>,
    tx: &mpsc::UnboundedSender<Command>,
) {
    let batch = std::mem::take(&mut slot.pending);
    slot.opened = None;
    slot.in_flight = true;
    let value = next_value(slot.last_value, Utc::now());
    slot.last_value = Some(value);
    let (patcher, tx, target) = (patcher.clone(), tx.clone(), target.clone());
    tokio::spawn(async move {
        let requested_at = value.to_rfc3339_opts(SecondsFormat::Nanos, true);
        patcher.run_batch(&target, &requested_at, batch).await;
        let _ = tx.send(Command::Done(target));
    });
}

/// `now`, or one nanosecond past the previous value when the clock has not moved past it.
fn next_value(previous: Option<DateTime<Utc>>, now: DateTime<Utc>) -> DateTime<Utc> {
    match previous {
        Some(previous) if now <= previous => previous + chrono::Duration::nanoseconds(1),
        _ => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_strictly_increase_even_when_the_clock_does_not() {
        let t = Utc::now();
        assert_eq!(next_value(None, t), t);
        assert_eq!(next_value(Some(t), t), t + chrono::Duration::nanoseconds(1));
        let earlier = t - chrono::Duration::seconds(1);
        assert_eq!(
            next_value(Some(t), earlier),
            t + chrono::Duration::nanoseconds(1)
        );
        let later = t + chrono::Duration::seconds(1);
        assert_eq!(next_value(Some(t), later), later);
    }
}
