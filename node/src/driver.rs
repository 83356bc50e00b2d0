//! The round driver: one task that owns the node's state and selects over bounded channels
//! (network events, training results, consensus timers, a periodic tick, shutdown).
//!
//! Round `r` (= consensus height `r`), from ARCHITECTURE.md:
//! 1. train `theta_{r-1}` on the local shard (blocking thread), DP + compress, sign, gossip;
//! 2. validate peers' deltas (size, decoding, author, round, base hash, signature, one per
//!    author) and hold them;
//! 3. the proposer proposes `RoundValue { included, model_hash, .. }` once it holds n - f deltas
//!    (or 2f + 1 and `collect_ms` passed); validators recompute the aggregate and prevote only
//!    if the hash matches;
//! 4. on decision: append (value, certificate) to the ledger and fsync, then apply and persist
//!    the state, then start the next round.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use consensus::{
    Consensus, Ed25519KeyCache, Ed25519Signer, Ed25519Verifier, ErrorKind, Height, Input, Message,
    Output, Params, Timeout, ValidatorId, Value, ValueId, View, decode_message, decode_wal_entry,
    encode_message, encode_wal_entry,
};
use gossip::{
    MessageId, NetworkEvent, NetworkHandle, PeerAction, PeerId, StateSnapshot, Topic, Verdict,
};
use model::aggregate::Contribution;
use model::attack::Attack;
use model::data::Dataset;
use model::rng::Rng;
use tokio::sync::{mpsc, watch};

use crate::chain::Chain;
use crate::genesis::Genesis;
use crate::keys::{NodeKey, hex, peer_id_of};
use crate::metrics::{Metrics, Status};
use crate::store::Store;
use crate::wire::{
    DeltaMsg, Included, LedgerEntry, RoundValue, SignedDelta, SignedJoin, StateBody, momentum_hash,
    sha256,
};

/// At most this many validators are admitted per round.
const MAX_JOINS_PER_ROUND: usize = 4;

/// What a Byzantine demonstration node does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Byzantine {
    /// A model-level or data-level attack from `model::attack`.
    Attack(Attack),
    /// Signs two different deltas for each round.
    Equivocate,
    /// Sends nothing: no deltas, no votes.
    Silent,
}

impl std::str::FromStr for Byzantine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "equivocate" | "equivocation" => Ok(Self::Equivocate),
            "silent" => Ok(Self::Silent),
            _ => s
                .parse::<Attack>()
                .map(Self::Attack)
                .map_err(|e| format!("{e}; or equivocate, silent")),
        }
    }
}

/// Everything the driver needs.
pub struct DriverConfig {
    /// The node key.
    pub key: NodeKey,
    /// The genesis.
    pub genesis: Genesis,
    /// This node's training data.
    pub train: Dataset,
    /// Held-out data for the accuracy metric.
    pub test: Dataset,
    /// Demonstration misbehaviour.
    pub byzantine: Option<Byzantine>,
    /// Stop after committing this round (the process keeps serving until killed).
    pub max_rounds: Option<u64>,
    /// Print one JSON line per commit on stdout (for `cohort testnet`).
    pub json_events: bool,
    /// Evaluate the committed model on the test set every this many rounds (and at
    /// `max_rounds`); 0 never. Evaluation is observability, not protocol: it is CPU taken from
    /// the next round's training.
    pub eval_every: u64,
    /// Ask to become a validator (signed join request on the membership topic).
    pub join: bool,
}

/// One held delta of a round.
struct Held {
    /// The signed delta as received (kept as evidence should the author equivocate).
    raw: Arc<Vec<u8>>,
    digest: [u8; 32],
    samples: u64,
    base_hash: [u8; 32],
    decoded: Arc<Vec<f32>>,
}

struct Trained {
    round: u64,
    out: model::Result<model::train::TrainOutput>,
    secs: f64,
}

enum Fetched {
    Blob {
        round: u64,
        bytes: Vec<u8>,
    },
    /// No peer served it; a later validation pass may try again.
    BlobFailed {
        digest: [u8; 32],
    },
    State {
        peer: PeerId,
        snapshot: Result<StateSnapshot, gossip::Error>,
    },
}

/// The result of recomputing a value's aggregate.
#[derive(Clone)]
struct Applied {
    params: Arc<Vec<f32>>,
    velocity: Arc<Vec<f32>>,
    included: usize,
}

/// The round driver.
pub struct Driver {
    cfg: DriverConfig,
    me: ValidatorId,
    my_peer: PeerId,
    net: NetworkHandle,
    store: Store,
    metrics: Arc<Metrics>,
    status: watch::Sender<Status>,

    /// The verified chain: validator sets by height (joins take effect two rounds after commit).
    chain: Chain,
    /// Verified join requests waiting to be proposed, by joiner.
    pending_joins: BTreeMap<[u8; 32], SignedJoin>,
    last_join_sent: Option<Instant>,
    /// Last committed round.
    committed: u64,
    last_value: [u8; 32],
    params: Arc<Vec<f32>>,
    velocity: Arc<Vec<f32>>,
    model_hash: [u8; 32],
    residual: Vec<f32>,
    /// The committed ledger, also on disk (served to lagging peers and state syncs).
    ledger: Vec<LedgerEntry>,

    consensus: Option<Consensus>,
    /// Deltas held per round, per author (the first version seen).
    deltas: BTreeMap<u64, BTreeMap<[u8; 32], Held>>,
    /// Second versions from equivocating authors, by (round, digest): a proposal pins one
    /// version by digest, so honest nodes still agree on the bytes whichever they saw first.
    equivocated: BTreeMap<(u64, [u8; 32]), Held>,
    /// (round, author) pairs caught equivocating; the proposer leaves them out.
    equivocators: HashSet<(u64, [u8; 32])>,
    /// Consensus messages for later heights, replayed when the height starts.
    future: VecDeque<(u64, Message)>,
    pending_propose: Option<(Height, View)>,
    pending_validate: Vec<(ValueId, Value)>,
    applied: HashMap<ValueId, Applied>,
    fetching: HashSet<[u8; 32]>,
    timers: BinaryHeap<Reverse<(Instant, Timeout)>>,
    training_round: Option<u64>,
    height_started: Instant,
    trained_at: Option<Instant>,
    proposal_seen_at: Option<Instant>,
    train_secs: f64,
    /// This height's own signed delta when publishing it failed (retried on every tick).
    unpublished: Option<(u64, Vec<u8>)>,
    /// When the last commit's bookkeeping finished (start of the next round's clock).
    last_commit_done: Option<Instant>,
    syncing: bool,
    last_sync_try: Option<Instant>,
    lag_signals: u32,
    answered_lagging: HashMap<u64, Instant>,
    done_announced: bool,
    recovered_wal: Vec<Vec<u8>>,
    /// Set when a height was committed; the main loop starts the next one.
    need_start: bool,
    /// Commit events for `--json`, printed in order by a task that adds the wire counters.
    json_tx: Option<mpsc::UnboundedSender<serde_json::Value>>,
    /// A decided height waiting for included deltas before it is written and applied.
    pending_commit: Option<(u64, Value, consensus::Certificate, Instant)>,

    train_tx: mpsc::Sender<Trained>,
    fetch_tx: mpsc::Sender<Fetched>,
}

impl Driver {
    /// Recovers from `store` and builds the driver.
    fn new(
        cfg: DriverConfig,
        net: NetworkHandle,
        store: Store,
        recovered: crate::store::Recovered,
        metrics: Arc<Metrics>,
        status: watch::Sender<Status>,
    ) -> Result<(Self, mpsc::Receiver<Trained>, mpsc::Receiver<Fetched>)> {
        let me = cfg.key.validator_id();
        let my_peer = cfg.key.peer_id()?;
        let genesis_params = cfg.genesis.initial_params();
        let json_tx = cfg.json_events.then(|| spawn_json_printer(net.clone()));
        let ledger_len = recovered.ledger.len() as u64;
        // Verify the ledger we hold (cheap; also catches a tampered file before we act on it).
        let mut chain = Chain::new(&cfg.genesis);
        for e in &recovered.ledger {
            chain.apply(e, &cfg.genesis)?;
        }
        let last_value = chain.last_value;
        let last_model_hash = chain.model_hash;
        let (committed, params, velocity, syncing) = match recovered.state {
            Some(s)
                if s.round == ledger_len
                    && model::params::hash_params(&s.params) == last_model_hash =>
            {
                (s.round, s.params, s.velocity, false)
            }
            Some(s) => {
                tracing::warn!(
                    state_round = s.round,
                    ledger = ledger_len,
                    "state does not match the ledger; will sync state from peers"
                );
                (ledger_len, genesis_params, Vec::new(), true)
            }
            None if ledger_len == 0 => (0, genesis_params, Vec::new(), false),
            None => (ledger_len, genesis_params, Vec::new(), true),
        };
        let model_hash = if syncing {
            last_model_hash
        } else {
            model::params::hash_params(&params)
        };
        let (train_tx, train_rx) = mpsc::channel(4);
        let (fetch_tx, fetch_rx) = mpsc::channel(64);
        let mut d = Driver {
            me,
            my_peer,
            net,
            store,
            metrics,
            status,
            chain,
            pending_joins: BTreeMap::new(),
            last_join_sent: None,
            committed,
            last_value,
            params: Arc::new(params),
            velocity: Arc::new(velocity),
            model_hash,
            residual: recovered.residual,
            ledger: recovered.ledger,
            consensus: None,
            deltas: BTreeMap::new(),
            equivocated: BTreeMap::new(),
            equivocators: HashSet::new(),
            future: VecDeque::new(),
            pending_propose: None,
            pending_validate: Vec::new(),
            applied: HashMap::new(),
            fetching: HashSet::new(),
            timers: BinaryHeap::new(),
            training_round: None,
            height_started: Instant::now(),
            trained_at: None,
            proposal_seen_at: None,
            train_secs: 0.0,
            last_commit_done: None,
            unpublished: None,
            syncing,
            last_sync_try: None,
            lag_signals: 0,
            answered_lagging: HashMap::new(),
            done_announced: false,
            recovered_wal: Vec::new(),
            need_start: false,
            json_tx,
            pending_commit: None,
            train_tx,
            fetch_tx,
            cfg,
        };
        d.recovered_wal = recovered.wal;
        Ok((d, train_rx, fetch_rx))
    }
}

/// The height a WAL entry belongs to (a lock: that of its polka's votes).
fn wal_height(e: &consensus::WalEntry) -> Option<u64> {
    match e {
        consensus::WalEntry::Proposal(p) => Some(p.proposal.height.0),
        consensus::WalEntry::Vote(v) => Some(v.vote.height.0),
        consensus::WalEntry::Locked { polka, .. } => polka.first().map(|v| v.vote.height.0),
    }
}

/// Prints the JSON events in order, each commit event with the network's cumulative byte
/// counters added. Asking the swarm task for counters is a round trip, so it happens here, off
/// the driver's path, and does not show in the round's timings.
fn spawn_json_printer(net: NetworkHandle) -> mpsc::UnboundedSender<serde_json::Value> {
    let (tx, mut rx) = mpsc::unbounded_channel::<serde_json::Value>();
    tokio::spawn(async move {
        while let Some(mut v) = rx.recv().await {
            if v["event"] == "commit" {
                let c = net.counters().await.unwrap_or_default();
                v["wire_bytes_in"] = c.transport.bytes_in.into();
                v["wire_bytes_out"] = c.transport.bytes_out.into();
                v["blob_bytes_in"] = c.blob_protocol.bytes_in.into();
                v["blob_bytes_out"] = c.blob_protocol.bytes_out.into();
                v["delta_announce_bytes_in"] = c.topic(Topic::Deltas).gossip_bytes_in.into();
                v["consensus_bytes_in"] = c.topic(Topic::Consensus).gossip_bytes_in.into();
            }
            println!("{v}");
        }
    });
    tx
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
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let (mut d, mut train_rx, mut fetch_rx) =
        Driver::new(cfg, net, store, recovered, metrics, status)?;
    d.publish_status();
    if !d.syncing {
        d.start_height().await?;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = d
            .timers
            .peek()
            .map(|Reverse((at, _))| *at)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = shutdown.changed() => break,
            ev = events.recv() => match ev {
                Some(ev) => d.on_network(ev).await?,
                None => anyhow::bail!("network task stopped"),
            },
            Some(t) = train_rx.recv() => d.on_trained(t).await?,
            Some(f) = fetch_rx.recv() => d.on_fetched(f).await?,
            _ = tokio::time::sleep_until(next.into()) => d.fire_timers().await?,
            _ = tick.tick() => d.on_tick().await?,
        }
        if d.need_start {
            d.need_start = false;
            d.start_height().await?;
        }
    }
    Ok(())
}

impl Driver {
    /// The validator set of the height being decided.
    fn validators(&self) -> &consensus::ValidatorSet {
        self.chain.set_for(self.height())
    }

    fn is_validator(&self) -> bool {
        self.validators().contains(&self.me)
    }

    fn height(&self) -> u64 {
        self.committed + 1
    }

    fn n_params(&self) -> usize {
        self.params.len()
    }

    fn publish_status(&self) {
        let view = self.consensus.as_ref().map(|c| c.view().0).unwrap_or(0);
        let acc = self.metrics.accuracy_ppm.load(Ordering::Relaxed) as f32 / 1e6;
        let loss = self.metrics.loss_micro.load(Ordering::Relaxed) as f32 / 1e6;
        let prev = self.status.borrow().clone();
        let _ = self.status.send(Status {
            chain_id: self.cfg.genesis.chain_id.as_str().to_string(),
            peer_id: self.my_peer.to_string(),
            validator: self.is_validator(),
            round: self.committed,
            view,
            peers: prev.peers,
            validators: self.validators().len(),
            model_hash: hex(&self.model_hash),
            last_value: hex(&self.last_value),
            last_included: prev.last_included,
            accuracy: acc,
            loss,
        });
    }

    /// Starts consensus and training for `committed + 1`.
    async fn start_height(&mut self) -> Result<()> {
        let h = self.height();
        self.height_started = Instant::now();
        self.trained_at = None;
        self.proposal_seen_at = None;
        self.pending_propose = None;
        self.pending_validate.clear();
        self.applied.clear();
        self.timers.clear();
        // Drop deltas of finished rounds.
        self.deltas = self.deltas.split_off(&h);
        self.equivocated = self.equivocated.split_off(&(h, [0; 32]));
        self.equivocators.retain(|(r, _)| *r >= h);
        if self.cfg.byzantine == Some(Byzantine::Silent) {
            self.consensus = None;
            return Ok(());
        }
        // A node outside the validator set runs the same machine as a follower: it signs
        // nothing, and decides when it sees 2f + 1 precommits, so observers keep up in real time
        // (state sync remains the fallback when they fall behind).
        let params = Params {
            chain_id: self.cfg.genesis.chain_id.clone(),
            timeouts: self.cfg.genesis.timeouts,
        };
        let signer = Box::new(Ed25519Signer::new(self.cfg.key.signing_key()));
        // The WAL of the height we were at when we stopped. A node killed between appending a
        // commit to the ledger and storing the state restarts one height behind its WAL: the
        // entries of a later height stay for when we get there (dropping them could let us sign
        // twice at that height), those of a decided height are done.
        let (wal, later): (Vec<consensus::WalEntry>, Vec<Vec<u8>>) = {
            let mut now = Vec::new();
            let mut later = Vec::new();
            for b in std::mem::take(&mut self.recovered_wal) {
                let Ok(e) = decode_wal_entry(&b) else {
                    continue;
                };
                match wal_height(&e) {
                    Some(eh) if eh > h => later.push(b),
                    Some(eh) if eh < h => {}
                    _ => now.push(e),
                }
            }
            (now, later)
        };
        self.recovered_wal = later;
        // Keys decompressed once per height's validator set (consensus verifies 2n + 1
        // signatures per height; unknown signers fall back to the plain verifier).
        let verifier = Ed25519KeyCache::new(self.validators().members().iter().copied());
        let machine = if wal.is_empty() {
            Consensus::new(
                params,
                Height(h),
                self.validators().clone(),
                signer,
                Box::new(verifier),
            )
        } else {
            tracing::info!(
                round = h,
                entries = wal.len(),
                "recovering consensus from the WAL"
            );
            Consensus::recover(
                params,
                Height(h),
                self.validators().clone(),
                signer,
                Box::new(verifier),
                wal,
            )
            .map_err(|e| anyhow::anyhow!("recovering consensus WAL: {e}"))?
        };
        self.consensus = Some(machine);
        self.feed(vec![Input::StartHeight]).await?;
        // Replay buffered messages of this height.
        let buffered: Vec<(u64, Message)> = std::mem::take(&mut self.future).into_iter().collect();
        let mut replay = Vec::new();
        for (mh, m) in buffered {
            if mh == h {
                if let Some(i) = Input::from_message(m) {
                    replay.push(i);
                }
            } else if mh > h {
                self.future.push_back((mh, m));
            }
        }
        for i in replay {
            let _ = self.feed(vec![i]).await;
        }
        if self.is_validator() {
            self.start_training();
        }
        Ok(())
    }

    fn start_training(&mut self) {
        let round = self.height();
        if self.training_round == Some(round) {
            return;
        }
        self.training_round = Some(round);
        let kind = self.cfg.genesis.model;
        let params = self.params.clone();
        let data = self.cfg.train.clone();
        let train_cfg = self.cfg.genesis.train;
        let seed = self.cfg.genesis.file.seed;
        let me = self.me.0;
        let tx = self.train_tx.clone();
        tokio::task::spawn_blocking(move || {
            let stream =
                u64::from_le_bytes([me[0], me[1], me[2], me[3], me[4], me[5], me[6], me[7]]);
            let mut rng = Rng::derive(seed ^ stream, round);
            let t = Instant::now();
            let out = model::train::train_local(
                kind,
                &params,
                &data,
                &train_cfg,
                &mut rng,
                &candle_core::Device::Cpu,
            );
            let _ = tx.blocking_send(Trained {
                round,
                out,
                secs: t.elapsed().as_secs_f64(),
            });
        });
    }

    /// Feeds inputs to consensus and performs every output, including the follow-up inputs.
    async fn feed(&mut self, inputs: Vec<Input>) -> Result<()> {
        let mut queue: VecDeque<Input> = inputs.into();
        while let Some(input) = queue.pop_front() {
            let Some(machine) = self.consensus.as_mut() else {
                return Ok(());
            };
            let outputs = machine.apply(input).map_err(anyhow::Error::new)?;
            let (follow, decided) = self.perform_outputs(outputs).await?;
            if decided {
                return Ok(());
            }
            queue.extend(follow);
        }
        Ok(())
    }

    /// Performs consensus outputs in order; returns follow-up inputs and whether the height
    /// was decided (then the rest of this height's work is moot).
    async fn perform_outputs(&mut self, outputs: Vec<Output>) -> Result<(Vec<Input>, bool)> {
        let mut follow = Vec::new();
        for out in outputs {
            match out {
                Output::Persist(entry) => {
                    // Durable before any later output (the WAL rule).
                    let bytes =
                        encode_wal_entry(&entry).map_err(|e| anyhow::anyhow!("wal encode: {e}"))?;
                    self.store.append_wal(&bytes)?;
                }
                Output::Broadcast(msg) => {
                    if let Ok(bytes) = encode_message(&msg) {
                        let _ = self.net.publish(Topic::Consensus, bytes).await;
                    }
                }
                Output::ScheduleTimeout { timeout, after_ms } => {
                    let at = Instant::now() + Duration::from_millis(after_ms);
                    self.timers.push(Reverse((at, timeout)));
                }
                Output::GetValue { height, view } => {
                    self.pending_propose = Some((height, view));
                    if let Some(v) = self.try_propose()? {
                        follow.push(v);
                    }
                }
                Output::ValidateValue { id, value, .. } => {
                    if self.proposal_seen_at.is_none() {
                        self.proposal_seen_at = Some(Instant::now());
                    }
                    self.pending_validate.push((id, value));
                    follow.extend(self.check_validations()?);
                }
                Output::Decided {
                    height,
                    value,
                    certificate,
                    ..
                } => {
                    self.on_decided(height.0, value, certificate).await?;
                    return Ok((Vec::new(), true));
                }
                Output::Evidence(e) => {
                    self.metrics
                        .equivocations_total
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(offender = %hex(&e.offender().0), "consensus equivocation evidence");
                    if let Some(peer) = peer_id_of(&e.offender()) {
                        let _ = self.net.penalize(peer, PeerAction::Fatal).await;
                    }
                    if let Ok(bytes) = encode_message(&Message::Evidence(e)) {
                        let _ = self.net.publish(Topic::Consensus, bytes).await;
                    }
                }
            }
        }
        Ok((follow, false))
    }

    async fn fire_timers(&mut self) -> Result<()> {
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            if let Some(Reverse((_, t))) = self.timers.pop() {
                due.push(Input::TimeoutElapsed(t));
            }
        }
        for i in due {
            self.feed(vec![i]).await?;
        }
        Ok(())
    }

    async fn on_tick(&mut self) -> Result<()> {
        // A joining node repeats its signed request until a committed round admits it.
        let h = self.height();
        if self.cfg.join
            && !self.chain.set_for(h).contains(&self.me)
            && !self.chain.set_for(h + 1).contains(&self.me)
            && self
                .last_join_sent
                .is_none_or(|t| t.elapsed() > Duration::from_secs(2))
        {
            self.last_join_sent = Some(Instant::now());
            let j = SignedJoin::new(
                self.cfg.genesis.chain_id.as_str(),
                &self.cfg.key.signing_key(),
            );
            if let Ok(bytes) = j.encode() {
                let _ = self.net.publish(Topic::Membership, bytes).await;
            }
        }
        // Our delta could not be published (no peers yet): try again.
        if let Some((round, bytes)) = self.unpublished.take()
            && round == h
            && self
                .net
                .publish(Topic::Deltas, bytes.clone())
                .await
                .is_err()
        {
            self.unpublished = Some((round, bytes));
        }
        // The proposer may be waiting for the collection window to close.
        if self.pending_propose.is_some()
            && let Some(v) = self.try_propose()?
        {
            self.feed(vec![v]).await?;
        }
        // A decision whose deltas nobody served: take the state (and certificate) from a peer.
        if self
            .pending_commit
            .as_ref()
            .is_some_and(|(_, _, _, since)| since.elapsed() > Duration::from_secs(5))
        {
            tracing::warn!(
                round = self.height(),
                "could not fetch a decided round's deltas; syncing state"
            );
            self.pending_commit = None;
            self.syncing = true;
        }
        // Observers, and validators that fell behind, catch up by state sync.
        let stale = self.height_started.elapsed() > Duration::from_secs(3);
        let want_sync = self.syncing || !self.is_validator() && stale || self.lag_signals >= 3;
        if want_sync
            && self
                .last_sync_try
                .is_none_or(|t| t.elapsed() > Duration::from_millis(1500))
        {
            self.last_sync_try = Some(Instant::now());
            self.request_state().await;
        }
        Ok(())
    }

    async fn request_state(&mut self) {
        let Ok(peers) = self.net.peers().await else {
            return;
        };
        if peers.is_empty() {
            return;
        }
        // Rotate over peers deterministically by time.
        let idx = (self.height_started.elapsed().as_millis() as usize) % peers.len();
        let peer = peers[idx];
        let net = self.net.clone();
        let tx = self.fetch_tx.clone();
        let from = self.committed;
        tokio::spawn(async move {
            let snapshot = net.request_state(peer, from).await;
            let _ = tx.send(Fetched::State { peer, snapshot }).await;
        });
    }

    async fn on_network(&mut self, ev: NetworkEvent) -> Result<()> {
        match ev {
            NetworkEvent::Message {
                topic,
                propagation_source,
                message_id,
                data,
                ..
            } => {
                let verdict = match topic {
                    Topic::Deltas => self.on_delta_bytes(&data, Some(propagation_source)).await?,
                    Topic::Consensus => self.on_consensus_bytes(&data, propagation_source).await?,
                    Topic::Membership => self.on_join_bytes(&data),
                };
                self.verdict(message_id, propagation_source, verdict).await;
            }
            NetworkEvent::PeerConnected { .. } | NetworkEvent::PeerDisconnected { .. } => {
                if let Ok(p) = self.net.peers().await {
                    let mut s = self.status.borrow().clone();
                    s.peers = p.len();
                    let _ = self.status.send(s);
                }
            }
            NetworkEvent::InboundBlobRequest { respond, .. } => {
                // Deltas we hold are already in the network's cache; nothing else is served.
                let _ = respond.send(None);
            }
            NetworkEvent::InboundStateRequest {
                from_height,
                respond,
                ..
            } => {
                let _ = respond.send(self.snapshot_from(from_height));
            }
        }
        Ok(())
    }

    fn on_join_bytes(&mut self, data: &[u8]) -> Verdict {
        let Ok(j) = SignedJoin::decode(data) else {
            return Verdict::Reject("malformed join request");
        };
        if j.verify(self.cfg.genesis.chain_id.as_str()).is_err() {
            return Verdict::Reject("bad join request");
        }
        let h = self.height();
        if self
            .chain
            .set_for(h + 1)
            .contains(&ValidatorId(j.validator))
        {
            return Verdict::Ignore("already a validator");
        }
        if self.pending_joins.len() >= 64 && !self.pending_joins.contains_key(&j.validator) {
            return Verdict::Ignore("too many pending joins");
        }
        self.pending_joins.insert(j.validator, j);
        Verdict::Accept
    }

    async fn verdict(&self, id: MessageId, from: PeerId, v: Verdict) {
        let _ = self.net.report_validation(id, from, v).await;
    }

    fn snapshot_from(&self, from_height: u64) -> Option<StateSnapshot> {
        if self.syncing || self.committed <= from_height {
            return None;
        }
        let certificates: Vec<Vec<u8>> = self
            .ledger
            .iter()
            .filter(|e| e.height > from_height && e.height <= self.committed)
            .take(10_000)
            .filter_map(|e| e.encode().ok())
            .collect();
        let body = StateBody {
            round: self.committed,
            value_id: self.last_value,
            params: self.params.to_vec(),
            velocity: self.velocity.to_vec(),
        };
        Some(StateSnapshot {
            checkpoint: Some(gossip::Checkpoint {
                meta: self.committed.to_le_bytes().to_vec(),
                bytes: body.encode().ok()?,
            }),
            certificates,
        })
    }

    /// Validates a delta from the network (or fetched by digest). Order of checks: size and
    /// decoding, chain, author, round, base hash, signature, one per author, payload.
    async fn on_delta_bytes(&mut self, data: &[u8], from: Option<PeerId>) -> Result<Verdict> {
        let m = &self.metrics;
        let Ok(sd) = SignedDelta::decode(data) else {
            m.reject("malformed");
            return Ok(Verdict::Reject("malformed delta"));
        };
        if sd.msg.chain_id != self.cfg.genesis.chain_id.as_str() {
            m.reject("wrong_chain");
            return Ok(Verdict::Reject("wrong chain"));
        }
        if !self
            .chain
            .set_for(sd.msg.round)
            .contains(&ValidatorId(sd.msg.author))
        {
            m.reject("not_validator");
            return Ok(Verdict::Reject("author not a validator"));
        }
        let h = self.height();
        if sd.msg.round < h {
            m.deltas_ignored_total.fetch_add(1, Ordering::Relaxed);
            return Ok(Verdict::Ignore("old round"));
        }
        if sd.msg.round > h + 2 {
            m.deltas_ignored_total.fetch_add(1, Ordering::Relaxed);
            self.lag_signals += 1;
            return Ok(Verdict::Ignore("far future round"));
        }
        if sd.msg.round == h && sd.msg.base_hash != self.model_hash && !self.syncing {
            m.reject("wrong_base");
            return Ok(Verdict::Reject("wrong base hash"));
        }
        if sd.verify().is_err() {
            m.reject("bad_signature");
            return Ok(Verdict::Reject("bad signature"));
        }
        let digest = sha256(data);
        let round = sd.msg.round;
        let author = sd.msg.author;
        let second = match self.deltas.get(&round).and_then(|r| r.get(&author)) {
            Some(prev) if prev.digest == digest => {
                m.deltas_ignored_total.fetch_add(1, Ordering::Relaxed);
                return Ok(Verdict::Ignore("duplicate delta"));
            }
            Some(_) if self.equivocated.contains_key(&(round, digest)) => {
                m.deltas_ignored_total.fetch_add(1, Ordering::Relaxed);
                return Ok(Verdict::Ignore("duplicate delta"));
            }
            Some(_) => true,
            None => false,
        };
        let Ok(decoded) = model::codec::decode(&sd.msg.payload, self.n_params()) else {
            m.reject("bad_payload");
            if let Some(p) = from {
                let _ = self.net.penalize(p, PeerAction::LowTolerance).await;
            }
            return Ok(Verdict::Reject("bad payload"));
        };
        let held = Held {
            raw: Arc::new(data.to_vec()),
            digest,
            samples: sd.msg.samples,
            base_hash: sd.msg.base_hash,
            decoded: Arc::new(decoded),
        };
        let verdict = if second {
            // Two different signed deltas for one round: keep both (a proposal may pin either),
            // never propose this author's delta for the round, and penalise it.
            m.reject("equivocation");
            m.equivocations_total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(round, author = %hex(&author), "delta equivocation: two different signed deltas for one round");
            if self.equivocators.insert((round, author)) {
                // Evidence: both signed deltas, durably, for anyone to re-check.
                if let Some(first) = self.deltas.get(&round).and_then(|r| r.get(&author)) {
                    let ev = crate::wire::DeltaEvidence {
                        round,
                        author,
                        first: first.raw.to_vec(),
                        second: data.to_vec(),
                    };
                    if let Err(e) = ev.check().and_then(|_| self.store.append_evidence(&ev)) {
                        tracing::warn!(error = %format!("{e:#}"), "recording equivocation evidence");
                    }
                }
                if let Some(peer) = peer_id_of(&ValidatorId(author)) {
                    let _ = self.net.penalize(peer, PeerAction::Fatal).await;
                }
            }
            if self.equivocated.len() < 1024 {
                self.equivocated.insert((round, digest), held);
            }
            Verdict::Reject("equivocation")
        } else {
            m.deltas_accepted_total.fetch_add(1, Ordering::Relaxed);
            self.deltas.entry(round).or_default().insert(author, held);
            Verdict::Accept
        };
        if sd.msg.round == h {
            let mut follow = self.check_validations()?;
            if let Some(v) = self.try_propose()? {
                follow.push(v);
            }
            if !follow.is_empty() {
                self.feed(follow).await?;
            }
        }
        Ok(verdict)
    }

    async fn on_consensus_bytes(&mut self, data: &[u8], from: PeerId) -> Result<Verdict> {
        let Ok(msg) = decode_message(data) else {
            return Ok(Verdict::Reject("malformed consensus message"));
        };
        if let Message::Evidence(e) = &msg {
            return Ok(
                if e.verify(
                    self.validators(),
                    &self.cfg.genesis.chain_id,
                    &Ed25519Verifier,
                )
                .is_ok()
                {
                    self.metrics
                        .equivocations_total
                        .fetch_add(1, Ordering::Relaxed);
                    if let Some(peer) = peer_id_of(&e.offender()) {
                        let _ = self.net.penalize(peer, PeerAction::Fatal).await;
                    }
                    Verdict::Accept
                } else {
                    Verdict::Reject("bad evidence")
                },
            );
        }
        let mh = msg.height().0;
        let h = self.height();
        if mh < h {
            // A lagging peer: help it with the commit of that height (rate-limited).
            self.answer_lagging(mh).await;
            return Ok(Verdict::Ignore("past height"));
        }
        if mh > h {
            if mh > h + 1 || matches!(msg, Message::Commit { .. }) {
                self.lag_signals += 1;
            }
            if self.future.len() < 4096 && mh <= h + 2 {
                self.future.push_back((mh, msg));
            }
            return Ok(Verdict::Ignore("future height"));
        }
        if self.consensus.is_none() {
            // Observers and syncing nodes: a commit for our next height means we are behind.
            if matches!(msg, Message::Commit { .. }) {
                self.lag_signals += 1;
            }
            return Ok(Verdict::Ignore("not participating"));
        }
        let Some(input) = Input::from_message(msg) else {
            return Ok(Verdict::Ignore("no input"));
        };
        let result = match self.consensus.as_mut() {
            Some(c) => c.apply(input),
            None => return Ok(Verdict::Ignore("not participating")),
        };
        match result {
            Ok(outputs) => {
                self.perform(outputs).await?;
                Ok(Verdict::Accept)
            }
            Err(e) => Ok(match e.kind() {
                ErrorKind::Misbehaviour => {
                    let _ = self.net.penalize(from, PeerAction::MidTolerance).await;
                    Verdict::Reject("consensus misbehaviour")
                }
                ErrorKind::NotValidYet => Verdict::Ignore("not valid yet"),
                ErrorKind::Ignored | ErrorKind::Local => Verdict::Ignore("ignored"),
            }),
        }
    }

    /// Performs outputs produced outside `feed` (a network message applied directly).
    async fn perform(&mut self, outputs: Vec<Output>) -> Result<()> {
        let (follow, decided) = self.perform_outputs(outputs).await?;
        if !decided && !follow.is_empty() {
            self.feed(follow).await?;
        }
        Ok(())
    }

    async fn answer_lagging(&mut self, height: u64) {
        if height == 0 || height > self.committed {
            return;
        }
        if self
            .answered_lagging
            .get(&height)
            .is_some_and(|t| t.elapsed() < Duration::from_secs(2))
        {
            return;
        }
        self.answered_lagging.insert(height, Instant::now());
        self.answered_lagging
            .retain(|_, t| t.elapsed() < Duration::from_secs(30));
        let Some(e) = self.ledger.get(height as usize - 1) else {
            return;
        };
        let Ok(certificate) = consensus::decode_certificate(&e.certificate) else {
            return;
        };
        let msg = Message::Commit {
            value: Value(e.value.clone()),
            certificate,
        };
        if let Ok(bytes) = encode_message(&msg) {
            let _ = self.net.publish(Topic::Consensus, bytes).await;
        }
    }

    /// Deltas of the current round that are usable (base hash matches), sorted by author.
    fn usable_deltas(&self) -> Vec<([u8; 32], &Held)> {
        let h = self.height();
        self.deltas
            .get(&h)
            .map(|r| {
                r.iter()
                    .filter(|(a, d)| {
                        d.base_hash == self.model_hash && !self.equivocators.contains(&(h, **a))
                    })
                    .map(|(a, d)| (*a, d))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The delta `inc` names for the current round: the author's first version if the digest
    /// matches, else an equivocating author's other version with that digest.
    fn held(&self, inc: &Included) -> Option<&Held> {
        let h = self.height();
        self.deltas
            .get(&h)
            .and_then(|r| r.get(&inc.author))
            .filter(|d| d.digest == inc.digest)
            .or_else(|| self.equivocated.get(&(h, inc.digest)))
    }

    /// Recomputes `theta + server_step(rule(deltas))` for the given (sorted) inclusion list.
    fn compute(&self, included: &[Included]) -> Result<Option<Applied>> {
        let mut inputs = Vec::with_capacity(included.len());
        for inc in included {
            let Some(d) = self.held(inc) else {
                return Ok(None);
            };
            inputs.push(Contribution {
                delta: d.decoded.as_slice(),
                samples: inc.samples,
            });
        }
        let mut params = self.params.to_vec();
        let mut velocity = self.velocity.to_vec();
        model::sim::apply_round(
            &mut params,
            &mut velocity,
            &self.cfg.genesis.rule,
            &self.cfg.genesis.server,
            &inputs,
        )?;
        Ok(Some(Applied {
            params: Arc::new(params),
            velocity: Arc::new(velocity),
            included: included.len(),
        }))
    }

    /// If this node must propose and holds enough deltas, builds the value.
    fn try_propose(&mut self) -> Result<Option<Input>> {
        let Some((height, view)) = self.pending_propose else {
            return Ok(None);
        };
        if height.0 != self.height() {
            self.pending_propose = None;
            return Ok(None);
        }
        let set = self.validators();
        let n = set.len();
        let quorum = set.quorum();
        let held = self.usable_deltas();
        // Wait for every validator's delta; once our own is done, wait at most `collect_ms` more
        // and propose with a quorum (2f + 1 deltas hold at least f + 1 honest ones).
        let collect = Duration::from_millis(self.cfg.genesis.file.timeouts.collect_ms);
        let window_closed = self.trained_at.is_some_and(|t| t.elapsed() >= collect)
            || self.height_started.elapsed() >= collect * 8;
        if !(held.len() >= n || held.len() >= quorum && window_closed) {
            return Ok(None);
        }
        let included: Vec<Included> = held
            .iter()
            .map(|(a, d)| Included {
                author: *a,
                digest: d.digest,
                samples: d.samples,
            })
            .collect();
        let Some(applied) = self.compute(&included)? else {
            return Ok(None);
        };
        let rv = RoundValue {
            version: 1,
            round: height.0,
            base_hash: self.model_hash,
            included,
            rule: self.cfg.genesis.rule.to_string(),
            model_hash: model::params::hash_params(&applied.params),
            momentum_hash: momentum_hash(&applied.velocity),
            prev_value: self.last_value,
            joins: self
                .pending_joins
                .values()
                .filter(|j| {
                    !self
                        .chain
                        .set_for(height.0 + 1)
                        .contains(&ValidatorId(j.validator))
                })
                .take(MAX_JOINS_PER_ROUND)
                .cloned()
                .collect(),
        };
        let value = Value(rv.encode()?);
        self.applied.insert(value.id(), applied);
        self.pending_propose = None;
        tracing::info!(
            round = height.0,
            view = view.0,
            included = rv.included.len(),
            "proposing"
        );
        Ok(Some(Input::ProposeValue {
            height,
            view,
            value,
        }))
    }

    /// Decides pending validations whose deltas are all here; starts fetches for missing ones.
    fn check_validations(&mut self) -> Result<Vec<Input>> {
        let mut verdicts = Vec::new();
        let pending = std::mem::take(&mut self.pending_validate);
        for (id, value) in pending {
            match self.validate(&id, &value)? {
                Some(valid) => verdicts.push(Input::ValueVerdict { id, valid }),
                None => self.pending_validate.push((id, value)),
            }
        }
        Ok(verdicts)
    }

    /// `Some(valid)` when decided, `None` while deltas are missing.
    fn validate(&mut self, id: &ValueId, value: &Value) -> Result<Option<bool>> {
        if self.applied.contains_key(id) {
            return Ok(Some(true));
        }
        let Ok(rv) = RoundValue::decode(&value.0) else {
            return Ok(Some(false));
        };
        let set = self.validators();
        let sorted = rv.included.windows(2).all(|w| w[0].author < w[1].author);
        let members = rv
            .included
            .iter()
            .all(|i| set.contains(&ValidatorId(i.author)));
        if rv.version != 1
            || rv.round != self.height()
            || rv.base_hash != self.model_hash
            || rv.prev_value != self.last_value
            || rv.rule != self.cfg.genesis.rule.to_string()
            || !sorted
            || !members
            || rv.included.len() < set.quorum()
        {
            return Ok(Some(false));
        }
        let next = self.chain.set_for(rv.round + 1);
        let joins_ok = rv.joins.len() <= MAX_JOINS_PER_ROUND
            && rv.joins.windows(2).all(|w| w[0].validator < w[1].validator)
            && rv.joins.iter().all(|j| {
                j.verify(self.cfg.genesis.chain_id.as_str()).is_ok()
                    && !next.contains(&ValidatorId(j.validator))
            });
        if !joins_ok {
            return Ok(Some(false));
        }
        if rv
            .included
            .iter()
            .any(|inc| self.held(inc).is_some_and(|d| d.samples != inc.samples))
        {
            return Ok(Some(false));
        }
        // Missing deltas (or another version than ours): fetch by digest; the gossip layer
        // checks the bytes, and the delta checks run on them as on any other.
        let missing = self.missing(&rv.included);
        if !missing.is_empty() {
            for digest in missing {
                self.spawn_fetch(rv.round, digest);
            }
            return Ok(None);
        }
        let Some(applied) = self.compute(&rv.included)? else {
            return Ok(Some(false));
        };
        let ok = model::params::hash_params(&applied.params) == rv.model_hash
            && momentum_hash(&applied.velocity) == rv.momentum_hash;
        if ok {
            self.applied.insert(*id, applied);
        } else {
            tracing::warn!(
                round = rv.round,
                "proposed aggregate hash does not match ours"
            );
        }
        Ok(Some(ok))
    }

    async fn on_fetched(&mut self, f: Fetched) -> Result<()> {
        match f {
            Fetched::Blob { round, bytes } => {
                self.fetching.remove(&sha256(&bytes));
                if round == self.height() {
                    let _ = self.on_delta_bytes(&bytes, None).await?;
                    if self.pending_commit.is_some() {
                        self.try_finish_commit().await?;
                    }
                    let follow = self.check_validations()?;
                    if !follow.is_empty() {
                        self.feed(follow).await?;
                    }
                }
            }
            Fetched::BlobFailed { digest } => {
                self.fetching.remove(&digest);
            }
            Fetched::State { peer, snapshot } => match snapshot {
                Ok(s) => {
                    if let Err(e) = self.adopt_state(s).await {
                        tracing::warn!(peer = %peer, error = %format!("{e:#}"), "state sync refused");
                        let _ = self.net.penalize(peer, PeerAction::LowTolerance).await;
                    }
                }
                Err(e) => tracing::debug!(peer = %peer, error = %e, "state request failed"),
            },
        }
        Ok(())
    }

    /// Verifies and adopts a peer's state: every certificate after our ledger, then the
    /// checkpoint, whose hashes must match the last certified value.
    async fn adopt_state(&mut self, s: StateSnapshot) -> Result<()> {
        let mut entries = Vec::new();
        for bytes in &s.certificates {
            entries.push(LedgerEntry::decode(bytes)?);
        }
        let Some(cp) = s.checkpoint else {
            return Ok(());
        };
        let body = StateBody::decode(&cp.bytes)?;
        if body.round <= self.committed && !self.syncing {
            return Ok(());
        }
        // Verify the chain of certificates from our ledger's end.
        let mut chain = self.chain.clone();
        let mut to_append = Vec::new();
        for e in entries
            .into_iter()
            .filter(|e| e.height > self.ledger.len() as u64)
        {
            chain.apply(&e, &self.cfg.genesis)?;
            to_append.push(e);
        }
        let target = chain.height;
        anyhow::ensure!(
            body.round == target,
            "checkpoint is for round {}, certificates end at {target}",
            body.round
        );
        let (model_hash, value_id) = (chain.model_hash, chain.last_value);
        anyhow::ensure!(
            body.params.len() == self.cfg.genesis.model.num_params(),
            "checkpoint has the wrong parameter count"
        );
        anyhow::ensure!(
            model::params::hash_params(&body.params) == model_hash,
            "checkpoint does not hash to the certified model"
        );
        anyhow::ensure!(body.value_id == value_id, "checkpoint names another value");
        for e in to_append {
            self.store.append_commit(&e)?;
            self.ledger.push(e);
        }
        self.chain = chain;
        self.store.write_state(&body)?;
        self.store.reset_wal()?;
        tracing::info!(round = target, "state synced from a peer");
        self.metrics
            .state_syncs_total
            .fetch_add(1, Ordering::Relaxed);
        self.committed = target;
        self.last_value = value_id;
        self.model_hash = model_hash;
        self.params = Arc::new(body.params);
        self.velocity = Arc::new(body.velocity);
        self.syncing = false;
        self.lag_signals = 0;
        self.training_round = None;
        self.after_commit(0, 0.0).await?;
        self.need_start = true;
        Ok(())
    }

    async fn on_trained(&mut self, t: Trained) -> Result<()> {
        if t.round != self.height() || self.syncing {
            return Ok(());
        }
        let out = t.out.context("local training")?;
        self.train_secs = t.secs;
        self.trained_at = Some(Instant::now());
        if !self.is_validator() || self.cfg.byzantine == Some(Byzantine::Silent) {
            return Ok(());
        }
        let g = &self.cfg.genesis;
        let mut rng = Rng::derive(g.file.seed ^ 0xD9, t.round ^ u64::from(self.me.0[0]) << 40);
        let mut delta = out.delta;
        if let Some(Byzantine::Attack(a)) = self.cfg.byzantine
            && !a.is_data_level()
        {
            let benign: Vec<Arc<Vec<f32>>> = self
                .usable_deltas()
                .iter()
                .map(|(_, d)| d.decoded.clone())
                .collect();
            let refs: Vec<&[f32]> = benign.iter().map(|v| v.as_slice()).collect();
            let n = self.validators().len();
            delta = a.corrupt(&delta, &refs, n, self.validators().max_faulty(), &mut rng);
        }
        let residual = g.file.training.error_feedback.then_some(&mut self.residual);
        let payload =
            model::sim::prepare_update(delta, g.dp.as_ref(), g.compression, residual, &mut rng);
        if g.file.training.error_feedback {
            self.store.write_residual(&self.residual)?;
        }
        let msg = DeltaMsg {
            chain_id: g.chain_id.as_str().to_string(),
            round: t.round,
            base_hash: self.model_hash,
            author: self.me.0,
            samples: out.samples,
            train_loss: out.mean_loss,
            payload,
        };
        let mut to_send = vec![msg.clone()];
        if self.cfg.byzantine == Some(Byzantine::Equivocate) {
            let mut other = msg;
            other.payload = model::codec::encode(
                model::codec::Compression::Dense,
                &vec![0.0; self.n_params()],
            );
            to_send.push(other);
        }
        for (i, m) in to_send.into_iter().enumerate() {
            let bytes = m.sign(&self.cfg.key.signing_key())?.encode()?;
            if i == 0 {
                // Hold our own delta as any other.
                let _ = self.on_delta_bytes(&bytes, None).await?;
            }
            self.metrics
                .delta_bytes_out_total
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            if let Err(e) = self.net.publish(Topic::Deltas, bytes.clone()).await {
                // Typically no peer subscribed yet (a node that trains before its connections
                // are up): keep the real delta and retry on every tick, or no proposer might
                // ever hold a quorum of deltas.
                tracing::debug!(error = %e, "publishing delta; will retry");
                if i == 0 {
                    self.unpublished = Some((t.round, bytes));
                }
            }
        }
        if let Some(v) = self.try_propose()? {
            self.feed(vec![v]).await?;
        }
        Ok(())
    }

    /// The height is decided. The commit goes to the ledger together with the model it produces:
    /// if some included deltas are still missing they are fetched first, so the ledger never runs
    /// ahead of the stored model (and a node that cannot get them syncs the state instead).
    async fn on_decided(
        &mut self,
        height: u64,
        value: Value,
        certificate: consensus::Certificate,
    ) -> Result<()> {
        self.consensus = None;
        self.pending_commit = Some((height, value, certificate, Instant::now()));
        self.try_finish_commit().await
    }

    async fn try_finish_commit(&mut self) -> Result<()> {
        let Some((height, value, certificate, _)) = self.pending_commit.clone() else {
            return Ok(());
        };
        if height != self.height() {
            self.pending_commit = None;
            return Ok(());
        }
        let decided_at = Instant::now();
        let id = value.id();
        let rv = RoundValue::decode(&value.0)?;
        let applied = match self.applied.get(&id).cloned() {
            Some(a) => Some(a),
            None => self.compute(&rv.included)?,
        };
        let Some(a) = applied.filter(|a| model::params::hash_params(&a.params) == rv.model_hash)
        else {
            for digest in self.missing(&rv.included) {
                self.spawn_fetch(height, digest);
            }
            return Ok(());
        };
        self.pending_commit = None;
        let entry = LedgerEntry {
            height,
            value: value.0.clone(),
            certificate: consensus::encode_certificate(&certificate)
                .map_err(|e| anyhow::anyhow!("certificate encode: {e}"))?,
        };
        // Durable first: the commit is on disk before we act on it.
        self.store.append_commit(&entry)?;
        let rv = self.chain.apply(&entry, &self.cfg.genesis)?;
        self.ledger.push(entry);
        for j in &rv.joins {
            self.pending_joins.remove(&j.validator);
            tracing::info!(round = height, validator = %hex(&j.validator), "validator admitted");
        }
        self.store.reset_wal()?;
        self.last_value = id.0;
        self.committed = height;
        self.model_hash = rv.model_hash;
        self.params = a.params;
        self.velocity = a.velocity;
        self.store.write_state(&StateBody {
            round: height,
            value_id: id.0,
            params: self.params.to_vec(),
            velocity: self.velocity.to_vec(),
        })?;
        let agg_secs = decided_at.elapsed().as_secs_f64();
        let mut s = self.status.borrow().clone();
        s.last_included = a.included;
        let _ = self.status.send(s);
        self.after_commit(a.included, agg_secs).await?;
        self.need_start = true;
        Ok(())
    }

    /// Digests of included deltas this node does not hold.
    fn missing(&self, included: &[Included]) -> Vec<[u8; 32]> {
        included
            .iter()
            .filter(|inc| self.held(inc).is_none())
            .map(|inc| inc.digest)
            .collect()
    }

    /// Fetches a delta by digest from any peer (once at a time per digest).
    fn spawn_fetch(&mut self, round: u64, digest: [u8; 32]) {
        if !self.fetching.insert(digest) {
            return;
        }
        let net = self.net.clone();
        let tx = self.fetch_tx.clone();
        tokio::spawn(async move {
            let fetched = match net.request_blob(None, gossip::Digest(digest)).await {
                Ok(bytes) => Fetched::Blob { round, bytes },
                Err(_) => Fetched::BlobFailed { digest },
            };
            let _ = tx.send(fetched).await;
        });
    }

    /// Metrics, checkpoint, the commit line; after the state is on disk.
    async fn after_commit(&mut self, included: usize, agg_secs: f64) -> Result<()> {
        let g = &self.cfg.genesis;
        let total = self.height_started.elapsed().as_secs_f64();
        let train = self.train_secs.min(total);
        let gossip = self
            .trained_at
            .zip(self.proposal_seen_at)
            .map(|(t, p)| p.saturating_duration_since(t).as_secs_f64())
            .unwrap_or(0.0);
        let consensus = (total - train - gossip - agg_secs).max(0.0);
        if g.file.checkpoint_every > 0 && self.committed.is_multiple_of(g.file.checkpoint_every) {
            self.store
                .write_checkpoint(g.model, self.committed, &self.params)?;
        }
        let last = self.cfg.max_rounds == Some(self.committed);
        let every = self.cfg.eval_every;
        let (acc, loss) = if last || (every > 0 && self.committed.is_multiple_of(every)) {
            let (acc, loss) = model::train::evaluate_params(g.model, &self.params, &self.cfg.test)?;
            self.metrics
                .accuracy_ppm
                .store((acc as f64 * 1e6) as u64, Ordering::Relaxed);
            self.metrics
                .loss_micro
                .store((loss.max(0.0) as f64 * 1e6) as u64, Ordering::Relaxed);
            (Some(acc), Some(loss))
        } else {
            (None, None)
        };
        // The whole round, commit to commit, and what fell outside the four phases: the gap
        // between the last commit and this height's start, checkpoints, evaluation.
        let now = Instant::now();
        let cycle = self
            .last_commit_done
            .map(|t| now.saturating_duration_since(t).as_secs_f64())
            .unwrap_or_else(|| self.height_started.elapsed().as_secs_f64());
        self.last_commit_done = Some(now);
        let other = (cycle - total).max(0.0);
        for (i, v) in [train, gossip, consensus, agg_secs, other]
            .iter()
            .enumerate()
        {
            let us = (v * 1e6) as u64;
            self.metrics.phase_us[i].store(us, Ordering::Relaxed);
            self.metrics.phase_us_sum[i].fetch_add(us, Ordering::Relaxed);
        }
        self.metrics
            .rounds_committed_total
            .fetch_add(1, Ordering::Relaxed);
        self.publish_status();
        let bytes_out = self.metrics.delta_bytes_out_total.load(Ordering::Relaxed);
        tracing::info!(round = self.committed, accuracy = ?acc, loss = ?loss, included, hash = %hex(&self.model_hash), "committed");
        if let Some(tx) = &self.json_tx {
            let _ = tx.send(serde_json::json!({
                    "event": "commit",
                    "round": self.committed,
                    "accuracy": acc,
                    "loss": loss,
                    "included": included,
                    "model_hash": hex(&self.model_hash),
                    "delta_bytes_out": bytes_out,
                    "seconds": cycle,
                    "train_seconds": train,
                    "other_seconds": other,
                    "gossip_seconds": gossip,
                    "consensus_seconds": consensus,
                    "aggregate_seconds": agg_secs,
            }));
        }
        if let Some(max) = self.cfg.max_rounds
            && self.committed >= max
            && !self.done_announced
        {
            self.done_announced = true;
            if let Some(tx) = &self.json_tx {
                let _ = tx.send(serde_json::json!({
                    "event": "done",
                    "round": self.committed,
                    "model_hash": hex(&self.model_hash),
                    "peak_rss_kib": crate::metrics::peak_rss_kib(),
                }));
            }
        }
        Ok(())
    }
}
