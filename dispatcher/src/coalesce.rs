//! Coalescing: deliveries for the same target within the window become one patch. The window
//! opens with the first delivery, so none waits longer than the window plus the patch; those
//! arriving while a patch is in flight go into the next one. The `requestedAt` value is strictly
//! increasing per target.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::targets::Target;

/// What patches a batch: the [`Patcher`](crate::patch::Patcher), or a recorder in the tests.
pub trait RunBatch<T>: Send + Sync + 'static {
    /// Patches `target` once with `requested_at` for every delivery of `batch`.
    fn run_batch(
        &self,
        target: &Target,
        requested_at: &str,
        batch: Vec<T>,
    ) -> impl Future<Output = ()> + Send;
}

enum Command<T> {
    Submit(Target, T),
    /// The window of the target's pending batch may have closed.
    Flush(Target),
    /// The target's patch finished.
    Done(Target),
    /// How many targets have a slot.
    #[cfg(test)]
    Slots(tokio::sync::oneshot::Sender<usize>),
}

struct Slot<T> {
    pending: Vec<T>,
    opened: Option<Instant>,
    in_flight: bool,
    last_value: Option<DateTime<Utc>>,
}

impl<T> Slot<T> {
    /// Nothing waits for this target and nothing is patching it.
    fn is_idle(&self) -> bool {
        self.pending.is_empty() && !self.in_flight
    }
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self {
            pending: Vec::new(),
            opened: None,
            in_flight: false,
            last_value: None,
        }
    }
}

/// Handle for submitting deliveries to the coalescer task.
pub struct Coalescer<T> {
    tx: mpsc::UnboundedSender<Command<T>>,
}

impl<T: Send + 'static> Coalescer<T> {
    /// Starts the coalescer task; patches go through `patcher`.
    pub fn spawn(window: Duration, patcher: Arc<impl RunBatch<T>>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(window, patcher, tx.clone(), rx));
        Self { tx }
    }

    /// Adds a delivery's target to the target's next patch.
    pub fn submit(&self, target: Target, delivery: T) {
        // The task lives as long as any handle; a send can only fail at exit.
        let _ = self.tx.send(Command::Submit(target, delivery));
    }

    #[cfg(test)]
    async fn slots(&self) -> usize {
        let (reply, slots) = tokio::sync::oneshot::channel();
        let _ = self.tx.send(Command::Slots(reply));
        slots.await.unwrap_or(usize::MAX)
    }
}

async fn run<T: Send + 'static>(
    window: Duration,
    patcher: Arc<impl RunBatch<T>>,
    tx: mpsc::UnboundedSender<Command<T>>,
    mut rx: mpsc::UnboundedReceiver<Command<T>>,
) {
    let mut slots: HashMap<Target, Slot<T>> = HashMap::new();
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
                } else if slot.is_idle() {
                    forget_or_later(&mut slots, target, &schedule_flush, window);
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
                    None => forget_or_later(&mut slots, target, &schedule_flush, window),
                }
            }
            #[cfg(test)]
            Command::Slots(reply) => {
                let _ = reply.send(slots.len());
            }
        }
    }
}

/// Drops an idle target's slot, so that slots do not pile up with every target ever patched.
/// Its last value is safe to forget once the clock is past it (the next value is then `now`,
/// greater); until then, look again a window later.
fn forget_or_later<T>(
    slots: &mut HashMap<Target, Slot<T>>,
    target: Target,
    schedule_flush: &impl Fn(Target, Instant),
    window: Duration,
) {
    let past = slots
        .get(&target)
        .is_some_and(|slot| slot.last_value.is_none_or(|last| Utc::now() > last));
    if past {
        slots.remove(&target);
    } else {
        schedule_flush(target, Instant::now() + window);
    }
}

fn start_batch<T: Send + 'static>(
    target: &Target,
    slot: &mut Slot<T>,
    patcher: &Arc<impl RunBatch<T>>,
    tx: &mpsc::UnboundedSender<Command<T>>,
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
    use std::sync::Mutex;

    /// Records each patch as (target name, requestedAt, the batch), taking `takes` to patch.
    #[derive(Default)]
    struct Recorded {
        takes: Duration,
        patches: Mutex<Vec<(String, String, Vec<u32>)>>,
    }

    impl RunBatch<u32> for Recorded {
        async fn run_batch(&self, target: &Target, requested_at: &str, batch: Vec<u32>) {
            tokio::time::sleep(self.takes).await;
            if let Ok(mut patches) = self.patches.lock() {
                patches.push((target.name.clone(), requested_at.to_owned(), batch));
            }
        }
    }

    impl Recorded {
        fn patches(&self) -> Vec<(String, String, Vec<u32>)> {
            self.patches.lock().map(|p| p.clone()).unwrap_or_default()
        }
    }

    fn target(name: &str) -> Target {
        Target {
            api_version: "source.toolkit.fluxcd.io/v1".into(),
            kind: "GitRepository".into(),
            namespace: "flux-system".into(),
            name: name.into(),
        }
    }

    const WINDOW: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_one_patch_per_target_once_the_window_closes() {
        let recorded = Arc::new(Recorded::default());
        let coalescer = Coalescer::spawn(WINDOW, recorded.clone());
        for delivery in 0..5 {
            coalescer.submit(target("a"), delivery);
        }
        for delivery in 10..13 {
            coalescer.submit(target("b"), delivery);
        }
        tokio::time::sleep(WINDOW - MS).await;
        assert!(
            recorded.patches().is_empty(),
            "nothing before the window closes"
        );
        tokio::time::sleep(2 * MS).await;
        let mut patches = recorded.patches();
        patches.sort();
        let batches: Vec<(&str, &[u32])> = patches
            .iter()
            .map(|(name, _, batch)| (name.as_str(), batch.as_slice()))
            .collect();
        assert_eq!(
            batches,
            [("a", &[0, 1, 2, 3, 4][..]), ("b", &[10, 11, 12][..])]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn deliveries_during_a_patch_go_into_the_next_one() {
        let recorded = Arc::new(Recorded {
            takes: Duration::from_millis(500),
            ..Default::default()
        });
        let coalescer = Coalescer::spawn(WINDOW, recorded.clone());
        coalescer.submit(target("a"), 1);
        // The first patch runs from 1 s to 1.5 s; these arrive while it does.
        tokio::time::sleep(WINDOW + Duration::from_millis(100)).await;
        coalescer.submit(target("a"), 2);
        coalescer.submit(target("a"), 3);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            recorded.patches().len(),
            1,
            "the second waits for its window"
        );
        // Their window opened at 1.1 s: the patch starts at 2.1 s and ends at 2.6 s; look at 2.7 s.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let patches = recorded.patches();
        let batches: Vec<&[u32]> = patches.iter().map(|(_, _, b)| b.as_slice()).collect();
        assert_eq!(batches, [&[1][..], &[2, 3][..]]);
        assert!(patches[0].1 < patches[1].1, "requestedAt increases");
        tokio::time::sleep(10 * WINDOW).await;
        assert_eq!(
            recorded.patches().len(),
            2,
            "nothing more without deliveries"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_targets_slot_is_dropped_and_its_next_value_still_increases() {
        let recorded = Arc::new(Recorded::default());
        let coalescer = Coalescer::spawn(WINDOW, recorded.clone());
        for name in ["a", "b", "c"] {
            coalescer.submit(target(name), 1);
        }
        assert_eq!(coalescer.slots().await, 3);
        tokio::time::sleep(2 * WINDOW).await;
        assert_eq!(recorded.patches().len(), 3);
        assert_eq!(coalescer.slots().await, 0, "patched and idle: no slot kept");

        coalescer.submit(target("a"), 2);
        tokio::time::sleep(2 * WINDOW).await;
        let patches = recorded.patches();
        let values: Vec<&str> = (patches.iter())
            .filter(|(name, _, _)| name == "a")
            .map(|(_, value, _)| value.as_str())
            .collect();
        assert_eq!(values.len(), 2);
        assert!(values[0] < values[1], "requestedAt increases: {values:?}");
    }

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
