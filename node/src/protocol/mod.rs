//! The node's protocol logic as a deterministic state machine: `handle(now, Event) -> Vec<Action>`.
//!
//! Nothing here reads the clock, touches a socket or a file, or draws randomness: time arrives as
//! `now` (milliseconds on the host's monotonic clock), peer bytes and training results arrive as
//! [`Event`]s, and everything the node must do leaves as [`Action`]s, performed in order by the
//! host (the tokio shell in `driver.rs`, or the whole-network simulator in `netsim`). Durable
//! actions come before the actions that depend on them (a WAL record before the vote it
//! protects, a ledger entry before the state it produces).
//!
//! The parts, each owning its state:
//! * [`committed`]: the verified chain, the committed model and the recent ledger;
//! * [`pool`]: validated deltas of the rounds still usable, and delta equivocation evidence;
//! * [`height`]: the consensus machine of the current height, its timers and buffered messages;
//! * [`round`]: proposing, validating values and computing the aggregate (no state of its own);
//! * [`sync`]: serving and adopting state snapshots, lag detection;
//! * [`telemetry`]: counters, phase timings and per-author inclusion;
//! * [`progress`]: whether the committed model still moves and is finite;
//! * [`local`]: this node's own training, its delta, its join requests;
//! * [`secure`]: secure aggregation's adverts, masking, selection and reveals;
//! * [`agreement`]: secure aggregation's consistency step (a quorum acknowledges one selection
//!   before anyone reveals).

pub mod agreement;
pub mod approval;
pub mod committed;
pub mod height;
pub mod local;
pub mod pool;
pub mod privacy;
pub mod progress;
pub mod recovery;
#[cfg(test)]
mod recovery_tests;
pub mod round;
pub mod secure;
#[cfg(test)]
mod secure_tests;
pub mod sync;
pub mod telemetry;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use consensus::ValidatorId;
use ed25519_dalek::SigningKey;
use gossip::{MessageId, PeerAction, PeerId, StateSnapshot, Topic, Verdict};
use model::attack::Attack;

use crate::genesis::Genesis;
use crate::store::Recovered;
use crate::wire::{DeltaEvidence, LedgerEntry, StateBody};

pub use telemetry::{CommitReport, Counters};

/// Milliseconds on the host's monotonic clock (the simulator's clock in `netsim`).
pub type Millis = u64;

/// What a Byzantine demonstration node does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Byzantine {
    /// A model-level or data-level attack from `model::attack`.
    Attack(Attack),
    /// Signs two different deltas for each round.
    Equivocate,
    /// Sends nothing: no deltas, no votes.
    Silent,
    /// Its proposals leave out due removals and remove an honest validator instead.
    LyingRemovals,
    /// Under secure aggregation: stops the process (as a crash would) the first time a
    /// selection that includes it is agreed, before it reveals, so the others must recover its
    /// self mask from their Shamir shares (the e2e test of a member that dies mid-round).
    CrashBeforeReveal,
}

impl std::str::FromStr for Byzantine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "equivocate" | "equivocation" => Ok(Self::Equivocate),
            "silent" => Ok(Self::Silent),
            "lying-removals" => Ok(Self::LyingRemovals),
            "crash-before-reveal" => Ok(Self::CrashBeforeReveal),
            _ => s.parse::<Attack>().map(Self::Attack).map_err(|e| {
                format!("{e}; or equivocate, silent, lying-removals, crash-before-reveal")
            }),
        }
    }
}

/// What the core is built from.
pub struct CoreConfig {
    /// The node's ed25519 key (validator identity and libp2p identity).
    pub key: SigningKey,
    /// The genesis.
    pub genesis: Genesis,
    /// Demonstration misbehaviour.
    pub byzantine: Option<Byzantine>,
    /// Ask to become a validator (signed join request on the membership topic).
    pub join: bool,
    /// Distinct per process start (the host draws it at random): makes each consensus
    /// (re-)broadcast's bytes new, so gossip does not drop a re-broadcast as a duplicate.
    pub instance: u64,
}

/// An input to the core.
#[derive(Debug)]
pub enum Event {
    /// The host is ready: start the first height (or state sync).
    Start,
    /// Periodic, and when [`Core::next_deadline`] is reached: fires due timers, retries.
    Tick,
    /// A gossip message waiting for a verdict.
    Gossip {
        /// Topic.
        topic: Topic,
        /// The peer it came from.
        from: PeerId,
        /// Gossip id, passed back with the verdict.
        id: MessageId,
        /// Payload (shared with the gossip layer's blob cache, not copied).
        data: Bytes,
    },
    /// A delta fetched by digest (the bytes match the digest).
    Fetched {
        /// Round it was fetched for.
        round: u64,
        /// The signed delta's bytes.
        bytes: Bytes,
    },
    /// No peer served a digest.
    FetchFailed {
        /// The digest.
        digest: [u8; 32],
    },
    /// A peer's answer to [`Action::RequestState`].
    State {
        /// Who served it (penalised if it lies).
        peer: PeerId,
        /// The snapshot.
        snapshot: StateSnapshot,
    },
    /// The operator's allow-list of joining keys (the `approve` admission policy), whole.
    Approve(Vec<[u8; 32]>),
    /// Local training of `round` finished.
    Trained {
        /// The round trained for.
        round: u64,
        /// The result.
        out: model::train::TrainOutput,
        /// Seconds it took (telemetry).
        secs: f64,
        /// Seed of this round's privacy noise, drawn by the host from the OS CSPRNG (never from
        /// anything a peer knows; the simulator seeds it from its own seed).
        noise_seed: u64,
    },
    /// The answer to [`Action::DrawSecrets`]: 64 bytes from the OS CSPRNG.
    Secrets {
        /// The round they are for.
        round: u64,
        /// The bytes (never logged).
        entropy: secure::Entropy,
    },
}

/// Something the host must do, in order.
#[derive(Debug)]
pub enum Action {
    /// Publish on a gossip topic.
    Publish {
        /// Topic.
        topic: Topic,
        /// Bytes.
        bytes: Bytes,
    },
    /// The verdict on a gossip message.
    Report {
        /// Its id.
        id: MessageId,
        /// The peer it came from.
        from: PeerId,
        /// Accept, reject (penalises the sender) or ignore.
        verdict: Verdict,
    },
    /// Lower a peer's score (or ban it).
    Penalize {
        /// The peer.
        peer: PeerId,
        /// How badly it misbehaved.
        action: PeerAction,
    },
    /// Fetch a delta by digest from any peer; answer with `Fetched` or `FetchFailed`.
    Fetch {
        /// The round it belongs to.
        round: u64,
        /// sha256 of the signed delta.
        digest: [u8; 32],
    },
    /// Ask a peer for a state snapshot after `from_height`; answer with `State`.
    RequestState {
        /// The requester holds everything up to here.
        from_height: u64,
    },
    /// Draw 64 fresh bytes from the OS CSPRNG for secure aggregation's secrets of `round`;
    /// answer with `Secrets`.
    DrawSecrets {
        /// The round.
        round: u64,
    },
    /// Train `params` on the local data for `round`; answer with `Trained`.
    Train {
        /// Round.
        round: u64,
        /// The committed parameters to start from.
        params: Arc<Vec<f32>>,
    },
    /// Append a consensus WAL record durably (before anything that follows).
    AppendWal(Vec<u8>),
    /// Start an empty WAL (the height is committed).
    ResetWal,
    /// Append a commit to the ledger durably.
    AppendLedger(LedgerEntry),
    /// Replace the stored committed state.
    WriteState(StateBody),
    /// Store this node's signed delta durably (before it is published).
    WriteOwnDelta(Bytes),
    /// Store how many deltas this node has released (before the next one leaves).
    WriteReleases(u64),
    /// Replace the stored error-feedback residual.
    WriteResidual(Vec<f32>),
    /// Record delta equivocation evidence.
    AppendEvidence(DeltaEvidence),
    /// Write a safetensors checkpoint.
    WriteCheckpoint {
        /// Round.
        round: u64,
        /// Parameters.
        params: Arc<Vec<f32>>,
    },
    /// A round was committed and stored (for metrics, evaluation and `--json`).
    Committed(CommitReport),
    /// The node cannot take part (e.g. its genesis differs from the network's): stop with
    /// this message.
    Fatal(String),
}

/// The node core. See the module documentation.
pub struct Core {
    cfg: CoreConfig,
    me: ValidatorId,
    /// The verified chain and the committed model.
    committed: committed::Committed,
    /// Deltas of the rounds still usable.
    pool: pool::DeltaPool,
    /// The current height's consensus.
    height: height::HeightState,
    /// State sync.
    sync: sync::SyncState,
    /// This node's own work: training, its delta, joins.
    local: local::LocalState,
    /// Counters and timings.
    telemetry: telemetry::Telemetry,
    /// Record-level privacy spent, and the budget.
    privacy: privacy::PrivacyAccount,
    /// Approvals of joiners (the `approve` policy).
    approvals: approval::Approvals,
    /// Secure aggregation's round state.
    secure: secure::SecureState,
    /// Set when a height was committed or adopted: when the next height may start (the
    /// genesis `min_round_ms` after the last one started).
    next_start: Option<Millis>,
}

impl Core {
    /// Recovers from what the store held and builds the core. Nothing happens until
    /// [`Event::Start`].
    pub fn new(cfg: CoreConfig, recovered: Recovered) -> Result<Core> {
        let me = ValidatorId(cfg.key.verifying_key().to_bytes());
        let (committed, syncing) = committed::Committed::recover(&cfg.genesis, &recovered)?;
        let mut local = local::LocalState::default();
        local.residual = recovered.residual;
        local.restore_own(recovered.own_delta);
        let mut secure = secure::SecureState::default();
        secure.restore(&recovered.wal, &me.0);
        Ok(Core {
            me,
            committed,
            pool: pool::DeltaPool::default(),
            height: height::HeightState::new(recovered.wal),
            sync: sync::SyncState::new(syncing),
            local,
            telemetry: telemetry::Telemetry::default(),
            privacy: privacy::PrivacyAccount::new(&cfg.genesis, recovered.releases),
            approvals: approval::Approvals::default(),
            secure,
            next_start: None,
            cfg,
        })
    }

    /// Handles one event at time `now`; returns what the host must do, in order.
    pub fn handle(&mut self, now: Millis, event: Event) -> Result<Vec<Action>> {
        let mut out = Vec::new();
        match event {
            Event::Start => {
                if !self.sync.syncing {
                    self.start_height(now, &mut out)?;
                }
            }
            Event::Tick => self.on_tick(now, &mut out)?,
            Event::Gossip {
                topic,
                from,
                id,
                data,
            } => {
                let verdict = match topic {
                    Topic::Deltas => self.on_delta_bytes(now, &data, Some(from), &mut out)?,
                    Topic::Consensus => self.on_consensus_bytes(now, &data, from, &mut out)?,
                    Topic::Membership => self.on_membership_bytes(&data, &mut out),
                };
                out.push(Action::Report { id, from, verdict });
            }
            Event::Fetched { round, bytes } => self.on_fetched(now, round, &bytes, &mut out)?,
            Event::FetchFailed { digest } => self.pool.fetch_done(&digest),
            Event::State { peer, snapshot } => {
                if let Err(e) = self.adopt_state(now, snapshot, &mut out) {
                    tracing::warn!(peer = %peer, error = %format!("{e:#}"), "state sync refused");
                    out.push(Action::Penalize {
                        peer,
                        action: PeerAction::LowTolerance,
                    });
                }
            }
            Event::Approve(keys) => self.on_approve(keys),
            Event::Trained {
                round,
                out: trained,
                secs,
                noise_seed,
            } => self.on_trained(now, round, trained, secs, noise_seed, &mut out)?,
            Event::Secrets { round, entropy } => self.on_secrets(now, round, entropy, &mut out)?,
        }
        // Timers that fell due while handling (a zero-delay follow-up), then the next height.
        self.fire_timers(now, &mut out)?;
        while self.next_start.is_some_and(|at| at <= now) {
            self.next_start = None;
            self.start_height(now, &mut out)?;
        }
        out.append(&mut self.secure.outbox);
        Ok(out)
    }

    /// When the host must send the next [`Event::Tick`] at the latest.
    pub fn next_deadline(&self) -> Option<Millis> {
        match (self.height.next_deadline(), self.next_start) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether a committed height waits for the minimum round time before the next starts.
    pub(crate) fn waiting_to_start(&self) -> bool {
        self.next_start.is_some()
    }

    /// The next height may start: now, or once the minimum round time has passed.
    fn schedule_start(&mut self) {
        let min = self.cfg.genesis.file.timeouts.min_round_ms;
        self.next_start = Some(self.telemetry.started().saturating_add(min));
    }

    /// The last committed round.
    pub fn committed_round(&self) -> u64 {
        self.committed.height()
    }

    /// The committed model's hash.
    pub fn model_hash(&self) -> [u8; 32] {
        self.committed.chain.model_hash
    }

    /// The committed parameters.
    pub fn params(&self) -> &Arc<Vec<f32>> {
        &self.committed.params
    }

    /// This node's validator id.
    pub fn id(&self) -> ValidatorId {
        self.me
    }

    /// Whether this node votes at the current height.
    pub fn is_validator(&self) -> bool {
        self.validators().contains(&self.me)
    }

    /// Whether this node sends deltas at the current height: a validator, or a contributor
    /// (under `open`, before its promotion).
    pub fn is_participant(&self) -> bool {
        let h = self.committed.height() + 1;
        self.is_validator() || self.committed.chain.is_contributor(&self.me.0, h)
    }

    /// The current view of consensus (0 when not running).
    pub fn view(&self) -> u32 {
        self.height.view()
    }

    /// Whether the node waits for a state snapshot.
    pub fn is_syncing(&self) -> bool {
        self.sync.syncing
    }

    /// The counters, for the host's metrics.
    pub fn counters(&self) -> &Counters {
        &self.telemetry.counters
    }

    /// The validator set of the height being decided.
    pub fn validators(&self) -> &consensus::ValidatorSet {
        self.committed.chain.set_for(self.committed.height() + 1)
    }

    /// Newcomers among the validators of the height being decided (members that joined after
    /// genesis and have voted for fewer than W rounds), and the set's size.
    pub fn newcomers(&self) -> (usize, usize) {
        let set = self.validators();
        (
            self.committed.newcomers(set, self.committed.height() + 1),
            set.len(),
        )
    }

    /// The signed delta with this digest, if held (served to peers that fetch it).
    pub fn blob(&self, digest: &[u8; 32]) -> Option<Bytes> {
        self.pool.blob(digest)
    }

    /// How many deltas the core holds (for the simulator's memory invariant).
    pub fn held_deltas(&self) -> usize {
        self.pool.len()
    }

    /// How many rounds the delta pool holds deltas of.
    pub fn rounds_held(&self) -> usize {
        self.pool.rounds_held()
    }

    /// Record-level epsilon this node has spent (DP-SGD with noise only).
    pub fn epsilon(&self) -> Option<f64> {
        self.privacy.epsilon()
    }

    /// Contributors whose deltas a value for the height being decided may include.
    pub fn contributor_count(&self) -> usize {
        self.committed
            .contributors(self.committed.height() + 1)
            .len()
    }

    /// Membership as `/status` shows it.
    pub fn membership_status(&self) -> crate::metrics::MembershipStatus {
        let h = self.committed.height() + 1;
        crate::metrics::MembershipStatus {
            policy: self.cfg.genesis.file.membership.policy.clone(),
            contributor: self.committed.chain.is_contributor(&self.me.0, h),
            contributors: self.contributor_count(),
            pending_joins: self
                .local
                .pending_joins
                .keys()
                .map(|k| crate::keys::hex(k))
                .collect(),
            newcomers: self.newcomers().0,
        }
    }

    /// Each current validator's and contributor's reputation over the recent rounds.
    pub fn reputation(&self) -> Vec<committed::Reputation> {
        self.committed.reputation(self.validators())
    }

    /// How often each author's delta was included in a round this node committed.
    pub fn inclusions(&self) -> &std::collections::BTreeMap<[u8; 32], u64> {
        self.telemetry.inclusions()
    }

    /// How many ledger entries the core keeps in memory (recent and membership changes).
    pub fn held_entries(&self) -> usize {
        self.committed.held_entries()
    }

    /// How many consensus messages wait for a later height.
    pub fn buffered_messages(&self) -> usize {
        self.height.buffered()
    }

    /// The id of the last committed value.
    pub fn last_value(&self) -> [u8; 32] {
        self.committed.chain.last_value
    }

    /// The genesis.
    pub fn genesis(&self) -> &Genesis {
        &self.cfg.genesis
    }
}
