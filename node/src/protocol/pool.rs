//! The delta pool: validated deltas of the rounds the node can still use (the current height and
//! the next two), one per author per round plus at most one other version of an equivocating
//! author (a proposal may pin either). Rounds below the current height are dropped when a
//! height starts, so the pool holds at most `3 * 2 * n` deltas, whatever the round.
//!
//! Checks on a received delta, cheapest first, each before anything is stored or counted:
//! size and decoding, chain, author in the round's validator set, round not past, signature,
//! round not too far ahead, sample claim within the genesis bound, base hash, duplicates, payload.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use consensus::ValidatorId;
use gossip::{PeerAction, PeerId, Verdict};

use super::{Action, Core, Millis};
use crate::keys::{hex, peer_id_of};
use crate::wire::{DeltaEvidence, Included, SignedDelta, SignedHeader, sha256};

/// Rounds ahead of the current height whose deltas are kept.
pub const LOOKAHEAD: u64 = 2;

/// One held delta.
pub struct Held {
    /// The signed delta as received (evidence should the author equivocate; served to peers).
    pub raw: Bytes,
    /// sha256 of `raw`.
    pub digest: [u8; 32],
    /// The author's sample claim (bounded by the genesis).
    pub samples: u64,
    /// The model it was trained from.
    pub base_hash: [u8; 32],
    /// The decoded delta (empty for a masked one).
    pub decoded: Arc<Vec<f32>>,
    /// Under secure aggregation: the checked masked payload.
    pub masked: Option<Arc<crate::wire::secagg::MaskedPayload>>,
    /// Its signed header (equivocation evidence, should the author sign another).
    pub signed: SignedHeader,
}

/// See the module documentation.
#[derive(Default)]
pub struct DeltaPool {
    /// First version seen, per round, per author.
    rounds: BTreeMap<u64, BTreeMap<[u8; 32], Held>>,
    /// An equivocating author's other version, by (round, author).
    other: BTreeMap<(u64, [u8; 32]), Held>,
    /// Digests being fetched.
    fetching: BTreeSet<[u8; 32]>,
}

/// How a checked delta relates to what the pool holds.
pub enum Admission {
    /// Already held (this version).
    Duplicate,
    /// Held now.
    New,
    /// A second, different version by the same author for the round: both kept as evidence.
    Equivocation(Box<DeltaEvidence>),
}

impl DeltaPool {
    /// Drops every round below `height`.
    pub fn prune(&mut self, height: u64) {
        self.rounds = self.rounds.split_off(&height);
        self.other = self.other.split_off(&(height, [0; 32]));
    }

    /// Adds a checked delta.
    pub fn admit(&mut self, round: u64, author: [u8; 32], held: Held) -> Admission {
        let r = self.rounds.entry(round).or_default();
        let Some(first) = r.get(&author) else {
            r.insert(author, held);
            return Admission::New;
        };
        if first.digest == held.digest
            || self
                .other
                .get(&(round, author))
                .is_some_and(|o| o.digest == held.digest)
        {
            return Admission::Duplicate;
        }
        let evidence = DeltaEvidence {
            first: first.signed.clone(),
            second: held.signed.clone(),
        };
        // A third version adds nothing: the evidence is already there.
        self.other.entry((round, author)).or_insert(held);
        Admission::Equivocation(Box::new(evidence))
    }

    /// Whether `author` signed two deltas for `round`.
    pub fn equivocated(&self, round: u64, author: &[u8; 32]) -> bool {
        self.other.contains_key(&(round, *author))
    }

    /// The version `inc` names: the author's first if the digest matches, else its other one.
    pub fn held(&self, round: u64, inc: &Included) -> Option<&Held> {
        self.rounds
            .get(&round)
            .and_then(|r| r.get(&inc.author))
            .filter(|d| d.digest == inc.digest)
            .or_else(|| {
                self.other
                    .get(&(round, inc.author))
                    .filter(|d| d.digest == inc.digest)
            })
    }

    /// Deltas of `round` trained from `base`, by authors that did not equivocate, by author.
    pub fn usable(&self, round: u64, base: &[u8; 32]) -> Vec<([u8; 32], &Held)> {
        self.rounds
            .get(&round)
            .map(|r| {
                r.iter()
                    .filter(|(a, d)| d.base_hash == *base && !self.equivocated(round, a))
                    .map(|(a, d)| (*a, d))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The signed delta with this digest.
    pub fn blob(&self, digest: &[u8; 32]) -> Option<Bytes> {
        self.rounds
            .values()
            .flat_map(|r| r.values())
            .chain(self.other.values())
            .find(|d| d.digest == *digest)
            .map(|d| d.raw.clone())
    }

    /// Marks a digest as being fetched; false when it already was.
    pub fn start_fetch(&mut self, digest: [u8; 32]) -> bool {
        self.fetching.insert(digest)
    }

    /// A fetch ended.
    pub fn fetch_done(&mut self, digest: &[u8; 32]) {
        self.fetching.remove(digest);
    }

    /// Distinct rounds with deltas held.
    pub fn rounds_held(&self) -> usize {
        self.rounds.len()
    }

    /// Deltas held.
    pub fn len(&self) -> usize {
        self.rounds.values().map(|r| r.len()).sum::<usize>() + self.other.len()
    }
}

impl Core {
    /// Validates a delta from the network (or fetched by digest, or our own) and holds it.
    pub(super) fn on_delta_bytes(
        &mut self,
        now: Millis,
        data: &Bytes,
        from: Option<PeerId>,
        out: &mut Vec<Action>,
    ) -> Result<Verdict> {
        if data.starts_with(crate::wire::secagg::SecAggMsg::MAGIC) {
            if self.secure().is_none() {
                self.telemetry.counters.reject("malformed");
                return Ok(Verdict::Reject("malformed"));
            }
            return self.on_secagg_bytes(now, data, from, out);
        }
        let h = self.committed.height() + 1;
        let (verdict, round) = self.check_and_admit(now, data, from, out);
        if let Verdict::Reject(reason) = verdict {
            self.telemetry.counters.reject(reason);
        } else if let Verdict::Ignore(_) = verdict {
            self.telemetry.counters.deltas_ignored += 1;
        } else {
            self.telemetry.counters.deltas_accepted += 1;
        }
        if verdict == Verdict::Accept {
            // A delta of this height may complete a pending validation or the proposal.
            if round == Some(h) {
                let mut follow = self.check_validations(out)?;
                if let Some(v) = self.try_propose(now)? {
                    follow.push(v);
                }
                self.feed(now, follow, out)?;
            }
        }
        Ok(verdict)
    }

    /// The verdict on a delta, and its round once it decoded.
    fn check_and_admit(
        &mut self,
        now: Millis,
        data: &Bytes,
        from: Option<PeerId>,
        out: &mut Vec<Action>,
    ) -> (Verdict, Option<u64>) {
        let Ok(sd) = SignedDelta::decode(data) else {
            return (Verdict::Reject("malformed"), None);
        };
        let round = sd.msg.round;
        (self.check_signed(now, data, sd, from, out), Some(round))
    }

    fn check_signed(
        &mut self,
        now: Millis,
        data: &Bytes,
        sd: SignedDelta,
        from: Option<PeerId>,
        out: &mut Vec<Action>,
    ) -> Verdict {
        let f = self.validators().max_faulty();
        let g = &self.cfg.genesis;
        if sd.msg.chain_id != g.chain_id.as_str() {
            return Verdict::Reject("wrong_chain");
        }
        let round = sd.msg.round;
        let author = sd.msg.author;
        let h = self.committed.height() + 1;
        if round < h {
            // Before the membership check: the set of an old round may be forgotten. But a
            // current validator's validly signed delta for a recent round shows it is alive,
            // only late: the proposers wait for it again. Without this a validator whose deltas
            // come in after the proposal (as after a partition heals) was never waited for,
            // never included, and removed for downtime (found by the compose smoke test).
            // The same for a contributor: its late deltas make the proposers wait for it.
            let window = super::committed::ACTIVITY_WINDOW as u64;
            let chain = &self.committed.chain;
            if round + window >= h
                && (chain.set_for(h).contains(&ValidatorId(author))
                    || chain.is_contributor(&author, h))
                && sd.verify().is_ok()
            {
                self.telemetry.heard(author, round);
                if round + 1 == h {
                    // Its usual arrival counts the late ones too, or a node always late is
                    // never waited for.
                    self.telemetry.arrived_late(author, now);
                }
            }
            return Verdict::Ignore("old round");
        }
        let chain = &self.committed.chain;
        if !chain.set_for(round).contains(&ValidatorId(author))
            && !chain.is_contributor(&author, round)
        {
            return Verdict::Reject("not_validator");
        }
        // The signature before anything that costs memory or work.
        if sd.verify().is_err() {
            return Verdict::Reject("bad_signature");
        }
        let digest = sha256(data);
        if author == self.me.0
            && self
                .local
                .own
                .as_ref()
                .is_none_or(|o| !o.signed(round, &digest))
        {
            // We sign one delta per round and store it before it leaves (own_delta): another
            // signed delta of ours for a current round comes from another process with our key.
            out.push(Action::Fatal(format!(
                "another process signs with this node's key (a delta for round {round} that this \
                 process did not sign): two processes must never share a validator key; stopping"
            )));
            return Verdict::Ignore("our key elsewhere");
        }
        if round > h + LOOKAHEAD {
            // A validator really works on a later round: we may be behind. Contributors do not
            // count: their keys cost nothing, so f + 1 of them prove nothing.
            if self.validators().contains(&ValidatorId(author)) {
                self.sync.lag_signal(author, f);
            }
            return Verdict::Ignore("far future round");
        }
        if sd.msg.samples == 0 || sd.msg.samples > g.max_samples {
            return Verdict::Reject("samples");
        }
        if round == h && sd.msg.base_hash != self.committed.chain.model_hash && !self.sync.syncing {
            return Verdict::Reject("wrong_base");
        }
        if self.pool.held(round, &inc(author, digest)).is_some() {
            return Verdict::Ignore("duplicate delta");
        }
        let n_params = self.committed.params.len();
        let decoded = if self.secure().is_some() {
            // A masked delta: its size, roster and commitments (`secure::check_masked`).
            self.check_masked(round, &author, &sd.msg.payload)
                .map(|m| (Vec::new(), Some(m)))
                .ok_or(())
        } else {
            model::codec::decode(&sd.msg.payload, n_params)
                .map(|d| (d, None))
                .map_err(|_| ())
        };
        let Ok((decoded, masked)) = decoded else {
            if let Some(p) = from {
                out.push(Action::Penalize {
                    peer: p,
                    action: PeerAction::LowTolerance,
                });
            }
            return Verdict::Reject("bad_payload");
        };
        let held = Held {
            // Shared with the gossip blob cache and the event that brought it, not copied.
            raw: data.clone(),
            digest,
            samples: sd.msg.samples,
            base_hash: sd.msg.base_hash,
            decoded: Arc::new(decoded),
            masked,
            signed: sd.signed_header(),
        };
        match self.pool.admit(round, author, held) {
            Admission::Duplicate => Verdict::Ignore("duplicate delta"),
            Admission::New => {
                self.telemetry.heard(author, round);
                if round == h {
                    self.telemetry.arrived(author, now);
                }
                Verdict::Accept
            }
            Admission::Equivocation(ev) => {
                self.telemetry.counters.equivocations += 1;
                tracing::warn!(round, author = %hex(&author), "delta equivocation: two different signed deltas for one round");
                if ev.check(self.cfg.genesis.chain_id.as_str()).is_ok() {
                    self.hold_delta_evidence(&ev);
                    out.push(Action::AppendEvidence(*ev));
                }
                if let Some(peer) = peer_id_of(&ValidatorId(author)) {
                    out.push(Action::Penalize {
                        peer,
                        action: PeerAction::Fatal,
                    });
                }
                Verdict::Reject("equivocation")
            }
        }
    }

    /// A fetched delta: checked like any other; it may complete a commit or a validation.
    pub(super) fn on_fetched(
        &mut self,
        now: Millis,
        round: u64,
        bytes: &Bytes,
        out: &mut Vec<Action>,
    ) -> Result<()> {
        self.pool.fetch_done(&sha256(bytes));
        if round != self.committed.height() + 1 {
            return Ok(());
        }
        self.on_delta_bytes(now, bytes, None, out)?;
        self.try_finish_commit(now, out)?;
        let follow = self.check_validations(out)?;
        self.feed(now, follow, out)
    }

    /// Asks for the included deltas this node does not hold (each digest once at a time).
    pub(super) fn fetch_missing(
        &mut self,
        round: u64,
        included: &[Included],
        out: &mut Vec<Action>,
    ) {
        for i in included {
            if self.pool.held(round, i).is_none() && self.pool.start_fetch(i.digest) {
                out.push(Action::Fetch {
                    round,
                    digest: i.digest,
                });
            }
        }
    }
}

fn inc(author: [u8; 32], digest: [u8; 32]) -> Included {
    Included {
        author,
        digest,
        samples: 0,
    }
}
