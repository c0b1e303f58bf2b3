//! fluxgate-dispatcher: consumes `FLUXGATE_DELIVERIES`, drops duplicates, resolves each
//! receiver's targets, coalesces bursts per target and asks Flux to reconcile by annotating
//! them, with retries, one leader at a time, and an outcome event for everything that happens.

mod admin;
mod cache;
mod coalesce;
mod config;
mod confirm;
mod consume;
mod delivery;
mod error;
mod index;
mod inflight;
mod leader;
mod metrics;
mod outcome;
mod patch;
mod request;
mod targets;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use fluxgate_shared::contract;
use fluxgate_shared::receivers::{self, ClusterSettings, Origin, Receivers};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::Config;
pub use error::Error;
// What `fluxgate replay --dry-run` asks: the targets a delivery would be dispatched to now.
pub use request::Inputs;
pub use targets::{Resolved, Resolver};

use crate::cache::Caches;
use crate::coalesce::Coalescer;
use crate::confirm::{Confirmer, Waiting};
use crate::consume::Dispatcher;
use crate::inflight::Registry;
use crate::leader::LeaderElector;
use crate::metrics::Metrics;
use crate::outcome::Recorder;
use crate::patch::Patcher;

/// Runs the dispatcher until `shutdown` resolves: then it stops fetching, lets in-flight
/// patches finish and be acknowledged, releases the lease and returns.
pub async fn run(
    config: Config,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let (stop_tx, stop) = watch::channel(false);
    let service = Service::build(&config, admin_listener, stop).await?;
    service.run(&config, stop_tx, shutdown).await
}

/// The dispatcher's parts, connected and provisioned, not yet consuming.
struct Service {
    metrics: Arc<Metrics>,
    kube: kube::Client,
    receivers: Receivers,
    consumer: consumer::PullConsumer,
    dispatcher: Dispatcher,
    registry: Registry,
    admin: tokio::task::JoinHandle<Result<(), std::io::Error>>,
    admin_address: std::net::SocketAddr,
    leading_tx: watch::Sender<bool>,
    leading: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
}

impl Service {
    /// Connects to NATS and the cluster, starts the receivers' source and the admin endpoint,
    /// and provisions the consumer and the outcomes stream.
    async fn build(
        config: &Config,
        admin_listener: TcpListener,
        stop: watch::Receiver<bool>,
    ) -> Result<Self, Error> {
        let metrics = Arc::new(Metrics::default());
        let nats = fluxgate_shared::nats_connect(
            "fluxgate-dispatcher",
            &config.common.nats_url,
            &config.common.nats_auth,
        )
        .await?;
        let jetstream = jetstream::new(nats.clone());
        let kube = kube::Client::try_default().await?;
        let origin = match &config.common.receivers_file {
            Some(path) => Origin::File {
                path: path.clone(),
                reload_interval: config.common.reload_interval,
            },
            // The dispatcher needs the Receivers' targets and filters, never their tokens.
            None => Origin::Cluster(
                kube.clone(),
                ClusterSettings {
                    namespace: config.common.watch_namespace.clone(),
                    read_secrets: false,
                    secrets_selector: None,
                },
            ),
        };
        let waiting = Arc::new(Waiting::default());
        let caches = {
            let waiting = waiting.clone();
            Caches::new(
                kube.clone(),
                Arc::new(move |scope, object| waiting.seen(scope, object)),
                metrics.watch_caches(),
            )
        };
        let resolver = Arc::new(Resolver::with_caches(
            kube.clone(),
            config.no_cross_namespace_refs,
            caches,
        ));
        let catalog_changed = Arc::new(tokio::sync::Notify::new());
        let receivers = {
            let mut stop = stop.clone();
            let changed = catalog_changed.clone();
            receivers::start(origin, move |_| changed.notify_one(), async move {
                let _ = stop.wait_for(|s| *s).await;
            })?
        };
        tokio::spawn(drop_unneeded_caches(
            resolver.clone(),
            receivers.catalog.clone(),
            catalog_changed,
        ));

        let admin_address = admin_listener.local_addr()?;
        let (leading_tx, leading) = watch::channel(!config.leader_election);
        metrics.set_leader(!config.leader_election);
        let admin = tokio::spawn(
            axum::serve(
                admin_listener,
                admin::router(Arc::new(admin::AdminState {
                    nats: nats.clone(),
                    metrics: metrics.clone(),
                    leading: leading.clone(),
                    catalog_synced: receivers.synced.clone(),
                })),
            )
            .into_future(),
        );

        let consumer = wait_for_consumer(&jetstream, config).await;
        let recorder = Recorder::provision(
            jetstream.clone(),
            metrics.clone(),
            config.stream_replicas,
            config.outcomes_max_age,
            config.outcomes_max_bytes,
            config.coalesce_window,
        )
        .await?;
        if config.dedup_ttl.is_some() {
            tracing::warn!(
                "--dedup-ttl (FLUXGATE_DEDUP_TTL) is ignored: the deliveries stream's duplicate window (ingest's --stream-duplicate-window) deduplicates deliveries"
            );
        }
        let confirmer = Arc::new(Confirmer {
            resolver: resolver.clone(),
            waiting,
            recorder: recorder.clone(),
            metrics: metrics.clone(),
            timeout: config.confirm_timeout,
        });
        let patcher = Arc::new(Patcher {
            resolver: resolver.clone(),
            recorder: recorder.clone(),
            metrics: metrics.clone(),
            confirmer,
            retry_deadline: config.retry_deadline,
            max_backoff: config.retry_max_backoff,
        });
        let registry = Registry::new(metrics.clone());
        let dispatcher = Dispatcher {
            catalog: receivers.catalog.clone(),
            resolver,
            recorder,
            coalescer: Coalescer::spawn(config.coalesce_window, patcher),
            registry: registry.clone(),
            metrics: metrics.clone(),
            dry_run: config.dry_run,
            indexer: index::Indexer::spawn(jetstream.client()),
            jetstream,
            max_deliver: config.max_deliver,
        };
        Ok(Self {
            metrics,
            kube,
            receivers,
            consumer,
            dispatcher,
            registry,
            admin,
            admin_address,
            leading_tx,
            leading,
            stop,
        })
    }

    /// The lifecycle: elect, consume while leading, and on `shutdown` stop consuming, drain
    /// what is in flight, release the lease and stop the background tasks.
    async fn run(
        self,
        config: &Config,
        stop_tx: watch::Sender<bool>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let keep_alive = tokio::spawn(self.registry.clone().keep_alive(config.ack_wait / 3));
        let (release_tx, release) = watch::channel(false);
        let elector = config.leader_election.then(|| {
            let identity = config
                .identity
                .clone()
                .unwrap_or_else(|| format!("fluxgate-dispatcher-{}", uuid::Uuid::now_v7()));
            let elector = LeaderElector::new(
                self.kube.clone(),
                &config.lease_namespace,
                &config.lease_name,
                &identity,
                config.lease_duration,
            );
            tokio::spawn(elector.run(self.leading_tx, release))
        });
        let pending = tokio::spawn(report_pending(self.consumer.clone(), self.metrics.clone()));

        // A target of its own, so a supervisor (the test harness) can learn the bound port.
        tracing::info!(
            target: "fluxgate_dispatcher::listen",
            admin = %self.admin_address,
            dry_run = config.dry_run,
            "fluxgate-dispatcher running"
        );
        let consuming = consume_while_leading(
            &self.dispatcher,
            &self.consumer,
            &self.metrics,
            self.stop.clone(),
            self.leading.clone(),
            self.receivers.synced.clone(),
        );
        tokio::pin!(consuming);
        tokio::select! {
            result = &mut consuming => result?,
            _ = shutdown => {
                tracing::info!("shutting down: no new deliveries, finishing in-flight patches");
                let _ = stop_tx.send(true);
                consuming.await?;
            }
        }
        tracing::info!("stopped consuming");
        drain(&self.registry, config.shutdown_grace).await;
        self.dispatcher.indexer.handed_over().await;
        // Acks and index entries are sent without waiting for an answer: see that the last
        // are on the wire.
        if let Err(error) = self.dispatcher.jetstream.client().flush().await {
            tracing::warn!(%error, "cannot flush the last acks and index entries; JetStream will redeliver them");
        }
        tracing::info!("in-flight deliveries drained");
        let _ = release_tx.send(true);
        if let Some(elector) = elector {
            let _ = elector.await;
        }
        let _ = self.receivers.task.await;
        keep_alive.abort();
        pending.abort();
        self.admin.abort();
        tracing::info!("fluxgate-dispatcher stopped");
        Ok(())
    }
}

/// The durable consumer, once ingest has created the deliveries stream and NATS answers.
async fn wait_for_consumer(
    jetstream: &jetstream::Context,
    config: &Config,
) -> consumer::PullConsumer {
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = async {
            let stream = jetstream
                .get_stream(contract::DELIVERIES_STREAM)
                .await
                .map_err(Error::nats)?;
            let wanted = consumer::pull::Config {
                durable_name: Some(config.consumer.clone()),
                description: Some("fluxgate-dispatcher".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                max_ack_pending: config.max_ack_pending,
                max_deliver: config.max_deliver,
                ..Default::default()
            };
            let mut consumer: consumer::PullConsumer = stream
                .get_or_create_consumer(&config.consumer, wanted.clone())
                .await
                .map_err(Error::nats)?;
            // A consumer made by an earlier version (ack wait 30 s) keeps its settings unless
            // given new ones: creating it again with them updates it.
            let current = &consumer.cached_info().config;
            if current.ack_wait != wanted.ack_wait
                || current.max_ack_pending != wanted.max_ack_pending
                || current.max_deliver != wanted.max_deliver
            {
                match stream.create_consumer(wanted).await {
                    Ok(updated) => consumer = updated,
                    Err(error) => {
                        tracing::warn!(%error, "cannot update the consumer's ack wait, max ack pending and max deliver")
                    }
                }
            }
            Ok::<_, Error>(consumer)
        };
        match attempt.await {
            Ok(consumer) => return consumer,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "waiting for the deliveries stream (created by fluxgate-ingest)");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Consumes while this replica leads, until `stop` -- once every receiver is known, so that no
/// delivery fails for a receiver not listed yet.
async fn consume_while_leading(
    dispatcher: &Dispatcher,
    consumer: &consumer::PullConsumer,
    metrics: &Metrics,
    mut stop: watch::Receiver<bool>,
    mut leading: watch::Receiver<bool>,
    mut synced: watch::Receiver<bool>,
) -> Result<(), Error> {
    tokio::select! {
        biased;
        _ = becomes(&mut stop, true) => return Ok(()),
        _ = becomes(&mut synced, true) => {}
    }
    loop {
        tokio::select! {
            // Stopping wins over leading when both hold.
            biased;
            _ = becomes(&mut stop, true) => return Ok(()),
            _ = becomes(&mut leading, true) => {}
        }
        metrics.set_leader(true);
        tracing::info!("leading: consuming deliveries");
        let result = dispatcher
            .consume(consumer, stop.clone(), leading.clone())
            .await;
        metrics.set_leader(false);
        if let Err(error) = result {
            tracing::error!(%error, "consuming failed; starting again");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Resolves once the flag is `value`; never, if its sender is gone without saying so.
pub(crate) async fn becomes(flag: &mut watch::Receiver<bool>, value: bool) {
    if flag.wait_for(|v| *v == value).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Waits (up to `grace`) for every delivery in flight to be finished and acknowledged.
async fn drain(registry: &Registry, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    while !registry.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !registry.is_empty() {
        tracing::warn!(
            in_flight = registry.len(),
            "shutdown grace elapsed; JetStream will redeliver the rest"
        );
    }
}

/// Drops the watch caches of scopes no Receiver names any more, after each change of the
/// catalog (a burst of changes is one pass).
async fn drop_unneeded_caches(
    resolver: Arc<Resolver>,
    catalog: receivers::SharedCatalog,
    changed: Arc<tokio::sync::Notify>,
) {
    loop {
        changed.notified().await;
        let current = catalog.current();
        let needed = (current.receivers())
            .flat_map(|receiver| resolver.scopes_named(receiver))
            .collect();
        resolver.caches().retain(&needed);
    }
}

/// Keeps the pending-deliveries gauge current.
async fn report_pending(mut consumer: consumer::PullConsumer, metrics: Arc<Metrics>) {
    loop {
        if let Ok(info) = consumer.info().await {
            metrics.set_pending(info.num_pending);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
