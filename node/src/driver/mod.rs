//! The tokio shell around the node core (`core`): one task that turns channels into
//! [`Event`]s and [`Action`]s into calls. It owns no protocol state: the core decides, the shell
//! performs (network, storage, training on a blocking thread, metrics, `--json` lines). It is the
//! only place that reads the clock (passed to the core as `now`) and the OS RNG (noise seeds).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gossip::{NetworkEvent, NetworkHandle, PeerId, Topic};
use model::data::Dataset;
use model::lm_local::LocalLm;
use tokio::sync::{mpsc, watch};

use crate::history::History;
use crate::keys::NodeKey;
use crate::metrics::{Metrics, Status};
use crate::protocol::{Action, Core, CoreConfig, Event, Millis};
use crate::store::Store;

pub use crate::protocol::Byzantine;

mod report;
mod train;

/// Everything the driver needs.
pub struct DriverConfig {
    /// The node key.
    pub key: NodeKey,
    /// The genesis.
    pub genesis: crate::genesis::Genesis,
    /// This node's training data.
    pub train: Dataset,
    /// Held-out data for the accuracy metric.
    pub test: model::shard::EvalSet,
    /// Demonstration misbehaviour.
    pub byzantine: Option<Byzantine>,
    /// Stop after committing this round (the process keeps serving until killed).
    pub max_rounds: Option<u64>,
    /// Print one JSON line per commit on stdout (for `cohort testnet`).
    pub json_events: bool,
    /// Evaluate the committed model on the test set every this many rounds (and at
    /// `max_rounds`); 0 never. Observability, not protocol: CPU taken from the next round.
    pub eval_every: u64,
    /// Ask to become a validator (signed join request on the membership topic).
    pub join: bool,
    /// The operator's allow-list of joining keys (the `approve` policy), re-read when it changes.
    pub allow_list: std::path::PathBuf,
}

/// What finished off the driver task and comes back as an event.
enum Done {
    Trained(Event),
    Fetched(Event),
}

/// I/O resources and the observability the shell performs for the core.
struct Shell {
    net: NetworkHandle,
    store: Store,
    metrics: Arc<Metrics>,
    status: watch::Sender<Status>,
    /// Metrics of committed rounds: history, evaluation, `--json` lines.
    report: report::Reporter,
    done_tx: mpsc::Sender<Done>,
    /// Shared with each round's training thread (a clone per round would double its memory).
    train: Arc<Dataset>,
    /// Our last delta when publishing failed (no peers yet), retried on ticks.
    unpublished: Option<(Instant, bytes::Bytes)>,
    origin: Instant,
    requests: usize,
    allow: crate::allow::AllowList,
    /// The transformer's local trainer, whose AdamW moments outlive a round when the genesis
    /// says `training.keep_moments` (node-local state, never sent).
    lm_local: Arc<std::sync::Mutex<Option<LocalLm>>>,
}

/// Runs the node until `shutdown` fires or a fatal error.
#[allow(clippy::too_many_arguments)] // each is a distinct resource the driver takes ownership of
pub async fn run(
    cfg: DriverConfig,
    net: NetworkHandle,
    mut events: mpsc::Receiver<NetworkEvent>,
    store: Store,
    recovered: crate::store::Recovered,
    metrics: Arc<Metrics>,
    status: watch::Sender<Status>,
    history: watch::Sender<History>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let core_cfg = CoreConfig {
        key: cfg.key.signing_key(),
        genesis: cfg.genesis,
        byzantine: cfg.byzantine,
        join: cfg.join,
        instance: getrandom::u64().context("OS random generator")?,
    };
    let mut core = Core::new(core_cfg, recovered)?;
    let (done_tx, mut done_rx) = mpsc::channel(64);
    let json = cfg
        .json_events
        .then(|| report::spawn_json_printer(net.clone()));
    let mut shell = Shell {
        report: report::Reporter::new(history, json, cfg.test, cfg.eval_every, cfg.max_rounds),
        net,
        store,
        metrics,
        status,
        done_tx,
        train: Arc::new(cfg.train),
        unpublished: None,
        origin: Instant::now(),
        requests: 0,
        allow: crate::allow::AllowList::new(cfg.allow_list),
        lm_local: Arc::default(),
    };
    shell.publish_status(&core);
    shell.step(&mut core, Event::Start).await?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let deadline = core
            .next_deadline()
            .map(|ms| shell.origin + Duration::from_millis(ms))
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let event = tokio::select! {
            _ = shutdown.changed() => break,
            ev = events.recv() => match ev {
                Some(ev) => match shell.network_event(&core, ev).await {
                    Some(e) => e,
                    None => continue,
                },
                None => anyhow::bail!("network task stopped"),
            },
            Some(d) = done_rx.recv() => match d {
                Done::Trained(e) => {
                    if let Event::Trained { round, out, .. } = &e {
                        shell.report.trained = Some((*round, out.mean_loss));
                    }
                    e
                }
                Done::Fetched(e) => e,
            },
            _ = tokio::time::sleep_until(deadline.into()) => Event::Tick,
            _ = tick.tick() => {
                shell.retry_publish().await;
                match shell.allow.poll() {
                    Some(keys) => Event::Approve(keys),
                    None => Event::Tick,
                }
            }
        };
        shell.step(&mut core, event).await?;
    }
    Ok(())
}

impl Shell {
    fn now(&self) -> Millis {
        self.origin.elapsed().as_millis() as Millis
    }

    /// One event through the core, then its actions, in order.
    async fn step(&mut self, core: &mut Core, event: Event) -> Result<()> {
        let started = Instant::now();
        let actions = core.handle(self.now(), event)?;
        let handled = started.elapsed().as_secs_f64();
        for a in actions {
            self.perform(core, a, handled).await?;
        }
        self.metrics.mirror(core.counters());
        Ok(())
    }

    /// Turns a network event into a core event; answers requests directly from the core.
    async fn network_event(&mut self, core: &Core, ev: NetworkEvent) -> Option<Event> {
        match ev {
            NetworkEvent::Message {
                topic,
                propagation_source,
                message_id,
                data,
                ..
            } => Some(Event::Gossip {
                topic,
                from: propagation_source,
                id: message_id,
                data,
            }),
            NetworkEvent::PeerConnected { .. } | NetworkEvent::PeerDisconnected { .. } => {
                if let Ok(p) = self.net.peers().await {
                    self.status.send_modify(|s| s.peers = p.len());
                }
                None
            }
            NetworkEvent::InboundBlobRequest {
                digest, respond, ..
            } => {
                let _ = respond.send(core.blob(&digest.0));
                None
            }
            NetworkEvent::InboundStateRequest {
                from_height,
                respond,
                ..
            } => {
                let _ = respond.send(core.snapshot_from(from_height));
                None
            }
        }
    }

    async fn perform(&mut self, core: &Core, action: Action, handled: f64) -> Result<()> {
        match action {
            Action::Publish { topic, bytes } => {
                let retry = (topic == Topic::Deltas).then(|| bytes.clone());
                if let Err(e) = self.net.publish(topic, bytes).await {
                    // Typically no peer subscribed yet: keep our delta and retry on ticks, or no
                    // proposer might ever hold a quorum of deltas.
                    tracing::debug!(error = %e, ?topic, "publishing; will retry deltas");
                    if let Some(b) = retry {
                        self.unpublished = Some((Instant::now(), b));
                    }
                }
            }
            Action::Report { id, from, verdict } => {
                let _ = self.net.report_validation(id, from, verdict).await;
            }
            Action::Penalize { peer, action } => {
                let _ = self.net.penalize(peer, action).await;
            }
            Action::Fetch { round, digest } => {
                let (net, tx) = (self.net.clone(), self.done_tx.clone());
                tokio::spawn(async move {
                    let ev = match net.request_blob(None, gossip::Digest(digest)).await {
                        Ok(bytes) => Event::Fetched { round, bytes },
                        Err(_) => Event::FetchFailed { digest },
                    };
                    let _ = tx.send(Done::Fetched(ev)).await;
                });
            }
            Action::RequestState { from_height } => self.request_state(from_height).await,
            Action::Train { round, params } => self.train(core, round, params),
            Action::DrawSecrets { round } => {
                // Secure aggregation's per-round secrets: 64 fresh bytes from the OS CSPRNG.
                let mut bytes = [0u8; 64];
                getrandom::fill(&mut bytes)
                    .map_err(|e| anyhow::anyhow!("OS random generator: {e}"))?;
                let tx = self.done_tx.clone();
                let entropy = crate::protocol::secure::Entropy(bytes);
                tokio::spawn(async move {
                    let _ = tx
                        .send(Done::Fetched(Event::Secrets { round, entropy }))
                        .await;
                });
            }
            Action::AppendWal(bytes) => self.store.append_wal(&bytes)?,
            Action::ResetWal => self.store.reset_wal()?,
            Action::AppendLedger(e) => self.store.append_commit(&e)?,
            Action::WriteState(s) => self.store.write_state(&s)?,
            Action::WriteResidual(r) => self.store.write_residual(&r)?,
            Action::WriteOwnDelta(b) => self.store.write_own_delta(&b)?,
            Action::WriteReleases(n) => self.store.write_releases(n)?,
            Action::AppendEvidence(ev) => {
                if let Err(e) = self.store.append_evidence(&ev) {
                    tracing::warn!(error = %format!("{e:#}"), "recording equivocation evidence");
                }
            }
            Action::WriteCheckpoint { round, params } => {
                self.store
                    .write_checkpoint(&core.genesis().model, round, &params)?;
            }
            Action::Committed(report) => self.committed(core, report, handled)?,
            Action::Fatal(why) => anyhow::bail!(why),
        }
        Ok(())
    }

    /// Our delta could not be published earlier: try again (for at most 30 s).
    async fn retry_publish(&mut self) {
        if let Some((since, bytes)) = self.unpublished.take()
            && since.elapsed() < Duration::from_secs(30)
            && self
                .net
                .publish(Topic::Deltas, bytes.clone())
                .await
                .is_err()
        {
            self.unpublished = Some((since, bytes));
        }
    }

    async fn request_state(&mut self, from_height: u64) {
        let Ok(peers) = self.net.peers().await else {
            return;
        };
        if peers.is_empty() {
            return;
        }
        // Rotate over peers, so one that cannot serve does not hold us up.
        self.requests += 1;
        let peer: PeerId = peers[self.requests % peers.len()];
        let (net, tx) = (self.net.clone(), self.done_tx.clone());
        tokio::spawn(async move {
            match net.request_state(peer, from_height).await {
                Ok(snapshot) => {
                    let _ = tx
                        .send(Done::Fetched(Event::State { peer, snapshot }))
                        .await;
                }
                Err(e) => tracing::debug!(peer = %peer, error = %e, "state request failed"),
            }
        });
    }
}
