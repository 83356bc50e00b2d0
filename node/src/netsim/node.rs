//! One simulated node: its key, data shard, in-memory store (what survives a crash), its core
//! while it runs, and the Byzantine behaviour the simulator layers on top of it.

use consensus::{Height, Message, Signer, ValidatorId, Value, View, Vote, VoteKind};
use ed25519_dalek::SigningKey;
use gossip::{Checkpoint, PeerId, StateSnapshot};
use model::rng::Rng;

use crate::protocol::{Action, Byzantine, Core, CoreConfig};
use crate::store::Recovered;
use crate::wire::{LedgerEntry, SignedDelta, StateBody};

/// What a Byzantine simulated node does, beyond what an honest core does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Two different signed deltas per round (core-level).
    Equivocate,
    /// Claims u64::MAX samples (core-level).
    InflateSamples,
    /// Sends nothing.
    Silent,
    /// Replaces its deltas with garbage, stale-base or undecodable ones (re-signed).
    BadDeltas,
    /// Serves state snapshots with a changed model or truncated certificates.
    LyingSnapshots,
    /// Signs prevotes and precommits for values it cannot have computed.
    BogusVotes,
    /// Re-broadcasts every join request it has seen, again and again.
    ReplayJoins,
    /// Proposes values that leave out due removals and remove an honest validator (not in
    /// [`Fault::ALL`]: its own scenario checks who was removed).
    LyingRemovals,
    /// A joiner that, besides asking to join itself, floods join requests from fresh keys: a
    /// batch each time its committed round advances (not in [`Fault::ALL`]: the join-flood
    /// scenario's).
    FloodJoins,
    /// A joiner (under `open`, a contributor until promoted) whose deltas are its honest ones
    /// sign-flipped and scaled by 10 (not in [`Fault::ALL`]: the poisoned-contributors
    /// scenario's).
    Poison,
    /// Under secure aggregation: as proposer, shows one included member its selection and every
    /// other node the same set without that member (signed too), and acknowledges each to
    /// whom it showed it (not in [`Fault::ALL`]: the split-selections scenario's).
    SplitSelections,
}

impl Fault {
    /// Every behaviour, in a fixed order.
    pub const ALL: [Fault; 7] = [
        Fault::Equivocate,
        Fault::InflateSamples,
        Fault::Silent,
        Fault::BadDeltas,
        Fault::LyingSnapshots,
        Fault::BogusVotes,
        Fault::ReplayJoins,
    ];

    /// What the core itself does for this fault.
    pub fn core_behaviour(self) -> Option<Byzantine> {
        match self {
            Fault::Equivocate => Some(Byzantine::Equivocate),
            Fault::InflateSamples => {
                Some(Byzantine::Attack(model::attack::Attack::InflateSamples {
                    scale: 1.0,
                }))
            }
            Fault::Silent => Some(Byzantine::Silent),
            Fault::LyingRemovals => Some(Byzantine::LyingRemovals),
            Fault::Poison => Some(Byzantine::Attack(model::attack::Attack::SignFlip {
                scale: 10.0,
            })),
            _ => None,
        }
    }
}

/// What survives a crash: exactly what the store actions wrote.
#[derive(Default, Clone)]
pub struct SimStore {
    /// Ledger entries.
    pub ledger: Vec<LedgerEntry>,
    /// WAL records of the current height.
    pub wal: Vec<Vec<u8>>,
    /// The committed state.
    pub state: Option<StateBody>,
    /// The state before the last write (what a crash inside a commit leaves).
    pub prev_state: Option<StateBody>,
    /// The residual.
    pub residual: Vec<f32>,
    /// This node's own last signed delta.
    pub own_delta: Option<Vec<u8>>,
    /// Deltas released (the privacy count).
    pub releases: u64,
}

impl SimStore {
    /// What a restart reads back.
    pub fn recovered(&self) -> Recovered {
        Recovered {
            ledger: self.ledger.clone(),
            wal: self.wal.clone(),
            state: self.state.clone(),
            residual: self.residual.clone(),
            own_delta: self.own_delta.clone(),
            releases: self.releases,
        }
    }

    /// A crash inside the last commit, after its ledger append and before its state write: the
    /// stored state goes back to the one before, one round behind the ledger. Nothing happens
    /// unless the state is the ledger's last round (the last commit wrote both).
    pub fn tear(&mut self) {
        let last = self.ledger.last().map(|e| e.height);
        if self.state.as_ref().map(|s| s.round) == last && self.prev_state.is_some() {
            self.state = self.prev_state.take();
        }
    }

    /// Performs a storage action; other actions are not the store's.
    pub fn perform(&mut self, a: &Action) {
        match a {
            Action::AppendWal(b) => self.wal.push(b.clone()),
            Action::ResetWal => self.wal.clear(),
            Action::AppendLedger(e) => self.ledger.push(e.clone()),
            Action::WriteState(s) => self.prev_state = self.state.replace(s.clone()),
            Action::WriteResidual(r) => self.residual = r.clone(),
            Action::WriteOwnDelta(b) => self.own_delta = Some(b.to_vec()),
            Action::WriteReleases(n) => self.releases = *n,
            _ => {}
        }
    }
}

/// A simulated node.
pub struct SimNode {
    /// Its key.
    pub key: SigningKey,
    /// Its peer id.
    pub peer: PeerId,
    /// Its training data.
    pub data: model::data::Dataset,
    /// Byzantine behaviour, if any.
    pub fault: Option<Fault>,
    /// Asks to join (not in the genesis set).
    pub join: bool,
    /// The store.
    pub store: SimStore,
    /// The running core (None while crashed or not started yet).
    pub core: Option<Core>,
    /// Simulated milliseconds one local training takes on this node.
    pub train_ms: u64,
}

impl SimNode {
    /// Validator id.
    pub fn id(&self) -> ValidatorId {
        ValidatorId(self.key.verifying_key().to_bytes())
    }

    /// Starts (or restarts) the core from the store.
    pub fn boot(&mut self, genesis: &crate::genesis::Genesis, instance: u64) -> anyhow::Result<()> {
        let cfg = CoreConfig {
            key: self.key.clone(),
            genesis: genesis.clone(),
            byzantine: self.fault.and_then(Fault::core_behaviour),
            join: self.join,
            instance,
        };
        self.core = Some(Core::new(cfg, self.store.recovered())?);
        Ok(())
    }

    /// Rewrites a delta this Byzantine node publishes.
    pub fn mangle_delta(&self, bytes: Vec<u8>, rng: &mut Rng) -> Vec<u8> {
        let Ok(mut sd) = SignedDelta::decode(&bytes) else {
            return bytes;
        };
        match rng.below(4) {
            0 => (0..rng.below(300) + 1)
                .map(|_| rng.next_u64() as u8)
                .collect(),
            1 => {
                sd.msg.base_hash = [7; 32];
                resign(sd, &self.key).unwrap_or(bytes)
            }
            2 => {
                sd.msg.payload = vec![9, 9, 9];
                resign(sd, &self.key).unwrap_or(bytes)
            }
            _ => {
                sd.msg.round = sd.msg.round.saturating_sub(1);
                resign(sd, &self.key).unwrap_or(bytes)
            }
        }
    }

    /// A snapshot this Byzantine node serves: a changed model, or entries cut short.
    pub fn lie(&self, s: StateSnapshot, rng: &mut Rng) -> StateSnapshot {
        let mut s = s;
        match rng.below(3) {
            0 => {
                if let Some(cp) = s.checkpoint.take()
                    && let Ok(mut body) = StateBody::decode(&cp.bytes)
                {
                    if let Some(p) = body.params.first_mut() {
                        *p += 1.0;
                    }
                    s.checkpoint = body.encode().ok().map(|bytes| Checkpoint {
                        meta: cp.meta,
                        bytes,
                    });
                }
            }
            1 => {
                s.certificates.truncate(s.certificates.len() / 2);
            }
            _ => {
                s.certificates.reverse();
            }
        }
        s
    }

    /// Signed votes for a random value at `height` (what a vote-forging node broadcasts).
    pub fn bogus_votes(
        &self,
        chain: &consensus::ChainId,
        height: u64,
        rng: &mut Rng,
    ) -> Vec<Message> {
        let value = Value((0..32).map(|_| rng.next_u64() as u8).collect());
        let signer = consensus::Ed25519Signer::new(self.key.clone());
        [VoteKind::Prevote, VoteKind::Precommit]
            .into_iter()
            .map(|kind| {
                let vote = Vote {
                    kind,
                    height: Height(height),
                    view: View(rng.below(3) as u32),
                    value: Some(value.id()),
                    validator: signer.id(),
                };
                Message::Vote(vote.sign(chain, &signer))
            })
            .collect()
    }
}

fn resign(sd: SignedDelta, key: &SigningKey) -> Option<Vec<u8>> {
    sd.msg.sign(key).ok()?.encode().ok()
}
