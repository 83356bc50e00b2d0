//! This node's own work: asking for training, turning a training result into a signed delta
//! (attack for demonstrations, clip and noise, compression with error feedback), and join
//! requests, its own and those it holds for proposals.
//!
//! The delta message carries no training loss (a data-dependent statistic that no privacy
//! mechanism covers): the field is always 0.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use consensus::ValidatorId;
use gossip::{Topic, Verdict};
use model::rng::Rng;

use super::{Action, Byzantine, Core, Millis};
use crate::wire::{DeltaMsg, GenesisHello, SignedJoin};

/// A joining node repeats its request this often until admitted.
pub const JOIN_RETRY_MS: Millis = 2_000;
/// Our delta is published again this often until its round commits (a partition or loss may
/// have kept it from the proposer; gossip sends each message once).
pub const REPUBLISH_MS: Millis = 1_000;
/// A node tells the membership topic its genesis this often.
pub const HELLO_EVERY_MS: Millis = 10_000;
/// Foreign genesis hashes remembered (each reported once).
pub const MAX_FOREIGN: usize = 16;
/// Join requests held for proposals.
pub const MAX_PENDING_JOINS: usize = 64;

/// See the module documentation.
#[derive(Default)]
pub struct LocalState {
    /// The round training was last started for.
    pub training_round: Option<u64>,
    /// When this height's training result arrived.
    pub trained_at: Option<Millis>,
    /// How long the last training took.
    pub train_secs: f64,
    /// Error-feedback residual (what compression has not sent yet).
    pub residual: Vec<f32>,
    /// Verified join requests waiting to be proposed, by joiner.
    pub pending_joins: BTreeMap<[u8; 32], SignedJoin>,
    /// When our own join request last went out.
    last_join_sent: Option<Millis>,
    /// Our own join request with its proof of work, re-sent while more than half of its
    /// lifetime is left (a proof costs about 2^join_work_bits hashes).
    own_join: Option<SignedJoin>,
    /// Our signed delta of the current round.
    pub(super) own: Option<OwnDelta>,
    /// When our genesis hello last went out.
    last_hello: Option<Millis>,
    /// Foreign genesis hashes already reported.
    foreign: std::collections::BTreeSet<[u8; 32]>,
    /// Verified consensus equivocation evidence waiting to be committed, by offender.
    pub evidence: BTreeMap<[u8; 32], consensus::Evidence>,
    /// Checked delta equivocation evidence waiting to be committed, by offender.
    pub delta_evidence: BTreeMap<[u8; 32], crate::wire::DeltaEvidence>,
}

/// The delta this process signed for a round: the bytes it sends (and re-sends), and the
/// digests of every version it signed (one, or two for an equivocating demonstration node).
/// Any other delta under our key for that round was signed by another process.
pub(super) struct OwnDelta {
    pub round: u64,
    pub bytes: Bytes,
    pub signed: Vec<[u8; 32]>,
    /// When it last went out.
    pub sent: Millis,
}

impl OwnDelta {
    fn new(round: u64, bytes: Bytes, sent: Millis) -> OwnDelta {
        OwnDelta {
            round,
            signed: vec![crate::wire::sha256(&bytes)],
            bytes,
            sent,
        }
    }

    /// Whether this process signed the delta `digest` for `round`.
    pub fn signed(&self, round: u64, digest: &[u8; 32]) -> bool {
        self.round == round && self.signed.contains(digest)
    }
}

impl LocalState {
    /// Our delta from before a restart, to be sent again (never re-signed) if its round is
    /// still open.
    pub fn restore_own(&mut self, bytes: Option<Vec<u8>>) {
        self.own = bytes.and_then(|b| {
            let round = crate::wire::SignedDelta::decode(&b).ok()?.msg.round;
            Some(OwnDelta::new(round, b.into(), 0))
        });
    }
}

impl Core {
    /// Asks the host to train the committed model for the current height (once per height).
    pub(super) fn start_training(&mut self, now: Millis, out: &mut Vec<Action>) {
        let round = self.committed.height() + 1;
        if self.local.training_round == Some(round) {
            return;
        }
        self.local.training_round = Some(round);
        self.local.trained_at = None;
        if let Some(bytes) = self
            .local
            .own
            .as_ref()
            .filter(|o| o.round == round)
            .map(|o| o.bytes.clone())
        {
            // Signed before a restart: send the same delta again, never a second one.
            let _ = self.on_delta_bytes(now, &bytes, None, out);
            self.local.trained_at = Some(now);
            out.push(Action::Publish {
                topic: Topic::Deltas,
                bytes,
            });
            return;
        }
        if self.is_participant() && !self.privacy.may_release() {
            return;
        }
        if self.secure().is_some() && self.is_participant() {
            out.push(Action::DrawSecrets { round });
        }
        out.push(Action::Train {
            round,
            params: self.committed.params.clone(),
        });
    }

    /// A training result: sign and publish the delta, hold it as any other, maybe propose.
    pub(super) fn on_trained(
        &mut self,
        now: Millis,
        round: u64,
        trained: model::train::TrainOutput,
        secs: f64,
        noise_seed: u64,
        out: &mut Vec<Action>,
    ) -> Result<()> {
        if round != self.committed.height() + 1 || self.sync.syncing {
            return Ok(());
        }
        if self.local.own.as_ref().is_some_and(|o| o.round == round) {
            // Already signed a delta for this round: a second one would be equivocation.
            return Ok(());
        }
        self.local.train_secs = secs;
        self.local.trained_at = Some(now);
        if !self.is_participant() || self.cfg.byzantine == Some(Byzantine::Silent) {
            return Ok(());
        }
        if self.secure().is_some() {
            // Masked once the roster is known; attacks are outside its threat model.
            return self.hold_for_masking(now, round, trained.delta, trained.samples, out);
        }
        let mut rng = Rng::derive(noise_seed, round);
        let mut delta = trained.delta;
        if let Some(Byzantine::Attack(a)) = self.cfg.byzantine
            && !a.is_data_level()
        {
            let base = self.committed.chain.model_hash;
            let benign: Vec<Arc<Vec<f32>>> = self
                .pool
                .usable(round, &base)
                .iter()
                .map(|(_, d)| d.decoded.clone())
                .collect();
            let refs: Vec<&[f32]> = benign.iter().map(|v| v.as_slice()).collect();
            let set = self.validators();
            delta = a.corrupt(&delta, &refs, set.len(), set.max_faulty(), &mut rng);
        }
        let g = &self.cfg.genesis;
        let ef = g.file.training.error_feedback;
        let residual = ef.then_some(&mut self.local.residual);
        let payload =
            model::sim::prepare_update(delta, g.dp.as_ref(), g.compression, residual, &mut rng);
        if ef {
            out.push(Action::WriteResidual(self.local.residual.clone()));
        }
        let samples = match self.cfg.byzantine {
            Some(Byzantine::Attack(a)) => a.claimed_samples(trained.samples),
            _ => trained.samples,
        };
        let msg = DeltaMsg {
            chain_id: g.chain_id.as_str().to_string(),
            round,
            base_hash: self.committed.chain.model_hash,
            author: self.me.0,
            samples,
            train_loss: 0.0,
            payload,
        };
        let mut to_send = vec![msg.clone()];
        if self.cfg.byzantine == Some(Byzantine::Equivocate) {
            let mut other = msg;
            other.payload = model::codec::encode(
                model::codec::Compression::Dense,
                &vec![0.0; self.committed.params.len()],
            );
            to_send.push(other);
        }
        self.release(now, to_send, out)?;
        let follow: Vec<_> = self.try_propose(now)?.into_iter().collect();
        self.feed(now, follow, out)
    }

    /// Signs and publishes our delta of the round (the first of `to_send`; an equivocating
    /// demonstration node signs more): counted as a privacy release and stored before it
    /// leaves, and held as any other delta.
    pub(super) fn release(
        &mut self,
        now: Millis,
        to_send: Vec<DeltaMsg>,
        out: &mut Vec<Action>,
    ) -> Result<()> {
        let round = self.committed.height() + 1;
        for (i, m) in to_send.into_iter().enumerate() {
            let bytes = Bytes::from(m.sign(&self.cfg.key)?.encode()?);
            if i == 0 {
                // Counted (durably) before it leaves: every peer receives it.
                out.push(Action::WriteReleases(self.privacy.record_release()));
                // Hold our own delta as any other.
                out.push(Action::WriteOwnDelta(bytes.clone()));
                self.local.own = Some(OwnDelta::new(round, bytes.clone(), now));
                self.on_delta_bytes(now, &bytes, None, out)?;
            } else if let Some(own) = self.local.own.as_mut() {
                own.signed.push(crate::wire::sha256(&bytes));
            }
            self.telemetry.counters.delta_bytes_out += bytes.len() as u64;
            out.push(Action::Publish {
                topic: Topic::Deltas,
                bytes,
            });
        }
        Ok(())
    }

    /// A membership message: a genesis hello or a join request.
    pub(super) fn on_membership_bytes(&mut self, data: &[u8], out: &mut Vec<Action>) -> Verdict {
        match GenesisHello::decode(data) {
            Some(Ok(hello)) => return self.on_hello(hello, out),
            Some(Err(_)) => return Verdict::Reject("malformed hello"),
            None => {}
        }
        match crate::wire::SignedApproval::decode(data) {
            Some(Ok(a)) => self.on_approval(a),
            Some(Err(_)) => Verdict::Reject("malformed approval"),
            None => self.on_join_bytes(data),
        }
    }

    /// Another node's genesis. Under our chain name but different: name what differs; and if we
    /// have committed nothing while the other network has, we are the odd one out: stop.
    pub(super) fn on_hello(&mut self, hello: GenesisHello, out: &mut Vec<Action>) -> Verdict {
        // Our own genesis (the usual case) is recognised by its hash, without parsing anything.
        let hash = crate::wire::sha256(hello.genesis.as_bytes());
        if hash == self.cfg.genesis.hash {
            return Verdict::Accept;
        }
        if self.local.foreign.contains(&hash) && (self.committed.height() > 0 || hello.height == 0)
        {
            return Verdict::Ignore("another genesis");
        }
        let Ok(file) = toml::from_str::<crate::genesis::GenesisFile>(&hello.genesis) else {
            return Verdict::Reject("malformed hello");
        };
        let Ok(theirs) = file.clone().check() else {
            return Verdict::Reject("invalid genesis in hello");
        };
        let ours = &self.cfg.genesis;
        if theirs.hash == ours.hash || file.chain_id != ours.file.chain_id {
            return Verdict::Accept;
        }
        let what = ours.differences(&file).join("; ");
        if self.committed.height() == 0 && hello.height > 0 {
            out.push(Action::Fatal(format!(
                "this node's genesis differs from that of the running network {:?} (at round {}): {what}; \
                 use the network's genesis file",
                ours.file.chain_id, hello.height
            )));
        } else if self.local.foreign.len() < MAX_FOREIGN && self.local.foreign.insert(hash) {
            tracing::error!(chain = %ours.file.chain_id, differences = %what, "a peer runs another genesis under our chain name; its messages are refused");
        }
        Verdict::Ignore("another genesis")
    }

    /// Our genesis and height, as a hello.
    pub(super) fn hello(&self, now: Millis) -> GenesisHello {
        GenesisHello {
            genesis: toml::to_string(&self.cfg.genesis.file).unwrap_or_default(),
            height: self.committed.height(),
            sent_ms: now,
        }
    }

    /// A join request from the network.
    fn on_join_bytes(&mut self, data: &[u8]) -> Verdict {
        let Ok(j) = SignedJoin::decode(data) else {
            return Verdict::Reject("malformed join request");
        };
        if j.verify(self.cfg.genesis.chain_id.as_str()).is_err() {
            return Verdict::Reject("bad join request");
        }
        if j.work_bits() < self.cfg.genesis.file.membership.join_work_bits {
            return Verdict::Reject("join request without enough proof of work");
        }
        let h = self.committed.height() + 1;
        if self
            .committed
            .chain
            .set_for(h + 1)
            .contains(&ValidatorId(j.validator))
        {
            return Verdict::Ignore("already a validator");
        }
        if !self.join_admissible(&j, h) {
            // Expired, replayed from before a removal, or from a joiner ahead of us.
            return Verdict::Ignore("join request not admissible");
        }
        // Keep a key's oldest admissible request: the proposer admits the oldest first, and a
        // joiner re-sends (newer) requests while it waits.
        if let Some(old) = self.local.pending_joins.get(&j.validator)
            && old.round <= j.round
            && self.join_admissible(old, h)
        {
            return Verdict::Ignore("an older request of this key is pending");
        }
        let joins = &mut self.local.pending_joins;
        if joins.len() >= MAX_PENDING_JOINS && !joins.contains_key(&j.validator) {
            return Verdict::Ignore("too many pending joins");
        }
        let key = j.validator;
        if joins.insert(key, j).is_none()
            && self.cfg.genesis.file.membership.policy == "approve"
            && self.is_validator()
        {
            tracing::info!(key = %crate::keys::hex(&key), "join request waits for approval (cohort approve KEY)");
        }
        Verdict::Accept
    }

    /// Periodic work: our join request, the proposer's collect window, timers, sync.
    pub(super) fn on_tick(&mut self, now: Millis, out: &mut Vec<Action>) -> Result<()> {
        let h = self.committed.height() + 1;
        let chain = &self.committed.chain;
        if self.cfg.join
            && !chain.set_for(h).contains(&self.me)
            && !chain.set_for(h + 1).contains(&self.me)
            && !chain.tenure.contributors.contains_key(&self.me.0)
            && self
                .local
                .last_join_sent
                .is_none_or(|t| now.saturating_sub(t) > JOIN_RETRY_MS)
        {
            self.local.last_join_sent = Some(now);
            let made = self.committed.height();
            let removed = chain.tenure.removed.get(&self.me.0).copied();
            let reusable = |j: &SignedJoin| {
                j.expires >= h + super::round::JOIN_TTL / 2 && removed.is_none_or(|r| j.round > r)
            };
            let j = match self.local.own_join.take() {
                Some(j) if reusable(&j) => j,
                _ => SignedJoin::new(
                    self.cfg.genesis.chain_id.as_str(),
                    &self.cfg.key,
                    made,
                    made + super::round::JOIN_TTL,
                )
                .solve(self.cfg.genesis.file.membership.join_work_bits),
            };
            self.local.own_join = Some(j.clone());
            if let Ok(bytes) = j.encode() {
                out.push(Action::Publish {
                    topic: Topic::Membership,
                    bytes: bytes.into(),
                });
            }
        }
        if self
            .local
            .last_hello
            .is_none_or(|t| now.saturating_sub(t) >= HELLO_EVERY_MS)
        {
            self.local.last_hello = Some(now);
            if let Ok(bytes) = self.hello(now).encode() {
                out.push(Action::Publish {
                    topic: Topic::Membership,
                    bytes: bytes.into(),
                });
            }
        }
        if let Some(own) = self.local.own.as_mut()
            && own.round == h
            && now.saturating_sub(own.sent) >= REPUBLISH_MS
        {
            own.sent = now;
            out.push(Action::Publish {
                topic: Topic::Deltas,
                bytes: own.bytes.clone(),
            });
        }
        self.approvals_tick(now, out);
        self.secure_tick(now, out)?;
        if let Some(v) = self.try_propose(now)? {
            self.feed(now, vec![v], out)?;
        }
        self.sync_tick(now, out);
        Ok(())
    }
}
