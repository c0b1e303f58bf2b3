//! The delivery index's writer: an entry for every delivery the consumer hands over, written in
//! the order read, so that `fluxgate deliveries show <id>` finds it without reading every
//! header. Written here rather than by ingest: the dispatcher reads every delivery anyway, and
//! the entry off ingest's request path took a tenth of ingest's CPU per webhook with it.

use async_nats::Client;
use fluxgate_shared::contract::{self, DeliveryMeta, IndexEntry};
use tokio::sync::{mpsc, oneshot};

/// Entries taken from the queue at once.
const MAX_TAKEN: usize = 512;

enum Queued {
    Entry(IndexEntry),
    /// Answered once everything queued before it is handed to the NATS client.
    Mark(oneshot::Sender<()>),
}

/// Queues entries for a task that publishes them in order. Queuing never waits, so entries
/// keep the order the consumer handed their deliveries over in -- the CLI counts on it:
/// whatever the newest entry's sequence, the deliveries before it are indexed (a delivery
/// after it is looked for among the stream's last messages).
pub struct Indexer(mpsc::UnboundedSender<Queued>);

impl Indexer {
    /// Starts the writer on `client`.
    pub fn spawn(client: Client) -> Self {
        let (queue, queued) = mpsc::unbounded_channel();
        tokio::spawn(write(client, queued));
        Self(queue)
    }

    /// Indexes the message at `seq` carrying `meta` (a delivery or a replay).
    pub fn add(&self, seq: u64, meta: &DeliveryMeta) {
        let _ = self.0.send(Queued::Entry(IndexEntry::of(seq, meta)));
    }

    /// Waits until every entry queued so far is with the NATS client, for a flush of the client
    /// to put them on the wire: at shutdown.
    pub async fn handed_over(&self) {
        let (marked, reached) = oneshot::channel();
        if self.0.send(Queued::Mark(marked)).is_ok() {
            let _ = reached.await;
        }
    }
}

/// Publishes each entry as a plain message the index stream takes in: no ack is awaited, as
/// the delivery is handled whether or not its entry lands (a delivery the index lacks is
/// still found by `#<seq>`).
async fn write(client: Client, mut queued: mpsc::UnboundedReceiver<Queued>) {
    let mut taken = Vec::with_capacity(MAX_TAKEN);
    while queued.recv_many(&mut taken, MAX_TAKEN).await > 0 {
        for item in taken.drain(..) {
            match item {
                Queued::Entry(entry) => {
                    let Ok(payload) = serde_json::to_vec(&entry) else {
                        continue;
                    };
                    let subject = contract::index_subject(&entry.id);
                    if let Err(error) = client.publish(subject, payload.into()).await {
                        tracing::debug!(%error, seq = entry.seq, "delivery not indexed");
                    }
                }
                Queued::Mark(reached) => {
                    let _ = reached.send(());
                }
            }
        }
    }
}
