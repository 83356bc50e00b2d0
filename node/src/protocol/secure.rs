//! Secure aggregation in the node (genesis `[privacy] secure_aggregation = true`): a node's
//! delta leaves it only masked, and the network unmasks only the sample-weighted mean of a
//! round's included deltas (the double masking of `model::secagg`, Bonawitz et al. 2017).
//!
//! One round `h`, all of it inside the height:
//! 1. **Advert.** When the height starts, the host draws 64 bytes from the OS CSPRNG
//!    ([`Action::DrawSecrets`], [`super::Event::Secrets`]): a fresh X25519 key and self seed. The
//!    node publishes its X25519 public key signed by its validator key (bound to its identity).
//! 2. **Masked delta.** Once trained, the node waits for the roster (adverts from every
//!    validator, or from a quorum once half of `round::max_wait` passed since the height
//!    started), scales its
//!    delta by `samples / max_samples`, encodes it in fixed point and masks it
//!    ([`model::secagg::mask`]). The signed delta's payload is a [`MaskedPayload`]: the roster's
//!    signed adverts, the masked vector and the seed commitments. Peers check its size (one
//!    value per parameter, one commitment per other roster member), every advert's signature
//!    and that the author is on its own roster.
//! 3. **Selection.** The proposer fixes the included set: the masked deltas of the largest
//!    group sharing one roster, claims within `aggregate::bounded_weights`' cap (so the weights
//!    are exactly the plain mean's; a claim above the cap is left out, where the plain mean
//!    caps its weight: a member's weight is fixed when it masks, before the included set is),
//!    at least a quorum, once the collect window closed. It
//!    signs and publishes the selection; a later proposer adopts the agreed selection, else the
//!    one it acknowledged.
//! 4. **Acknowledgement** ([`super::agreement`]). Every validator signs an acknowledgement of the
//!    first well-formed selection of the round it sees, and of no other. A selection is *agreed*
//!    once a quorum of the round's validators acknowledged it; at most one can be.
//! 5. **Reveal.** An included member reveals for the agreed selection only, once
//!    ([`model::secagg::reveal`]: its self seed and its pair seeds with the excluded roster
//!    members only).
//! 6. **Value.** With every included member's reveal, the proposer unmasks the sum, divides by
//!    the included weight, applies the server step, and proposes a value carrying the included
//!    set and the reveals; validators recompute the same and check the hash.
//!
//! **Dropouts.** A member that drops before the selection is excluded (double masking keeps its
//! late vector hidden: its self seed is never revealed). A member that drops after being
//! selected leaves its reveal missing; its self seed is then recovered ([`super::recovery`]):
//! every masked payload carries the author's self seed split (Shamir, threshold one less than
//! the round's quorum) into one share sealed to each other roster member (ChaCha20-Poly1305
//! under a key from their X25519 secret, plus a public commitment to each share; a share
//! that does not open refuses the delta). Half of `max_wait` after a node first saw the
//! round's agreement, it publishes, signed, its share of every member of the agreed selection
//! whose reveal it still lacks (never of a member outside it, once per member). With the
//! threshold's number of shares matching their commitments, the proposer proposes the value
//! with the shares in place of the missing reveal; validators recombine them, check the seed
//! against the member's commitment and unmask. The silent member's pair seeds with roster
//! members outside the selection come from those members: a node outside the selection adds
//! its pair seed with the silent member to its share (checked against the silent member's pair
//! commitment; what that member would have revealed itself). With too few shares, or an
//! excluded member gone too, after the view-0 propose timeout and `max_wait` since the
//! selection the proposer proposes the round **void** (reveals empty, model and momentum
//! unchanged), as before; validators accept a void value. A proposer that finds no quorum of masked deltas
//! sharing one roster (adverts delayed past the wait) voids the round after twice the propose
//! timeout, including nothing.
//!
//! **Threat model.** Members read all they receive, and up to f validators may deviate. An
//! active adversary can withhold reveals, and any validator, not only the round's proposer, can
//! sign a selection, so it can void rounds. It cannot make an honest member reveal, or an
//! honest holder publish a share, for a selection a quorum did not acknowledge, and honest
//! validators acknowledge one selection a round: so showing different members different
//! selections (one that includes member A, to collect A's self seed, and one that excludes A,
//! to collect the pair seeds with A) yields reveals for one selection at most, never both
//! halves of A's mask (test `a_split_selection_gets_no_reveal_for_two_sets`). More than f
//! colluding validators, or a colluding threshold of share holders, can unmask a member.
//! Robust rules are impossible here: the network sees only the sum.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::Result;
use consensus::{Input, ValidatorId};
use gossip::{PeerId, Topic, Verdict};
use model::aggregate::{Contribution, SAMPLE_CAP_FACTOR};
use model::secagg::{Advert, Domain, MemberSecrets, Quantizer, Reveal};

use super::agreement::Agreement;
use super::round::{Applied, max_wait};
use super::{Action, Byzantine, Core, Millis};
use crate::genesis::SecureAggregation;
use crate::wire::secagg::{
    AckBody, AdvertBody, MaskedPayload, RecoveredSeed, RevealBody, SecAggMsg, SelectionBody,
    SignedAck, SignedAdvert, SignedReveal, SignedSelection, selection_digest,
};
use crate::wire::{DeltaMsg, Included};

/// A roster entry: (member, X25519 public key).
type RosterKey = ([u8; 32], [u8; 32]);

/// 64 secret bytes from the OS CSPRNG (X25519 key, self seed). `Debug` prints nothing.
pub struct Entropy(pub [u8; 64]);

impl std::fmt::Debug for Entropy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Entropy(..)")
    }
}

/// Our trained delta, waiting for the round's roster.
struct Pending {
    round: u64,
    delta: Vec<f32>,
    samples: u64,
}

/// See the module documentation.
#[derive(Default)]
pub struct SecureState {
    /// Verified adverts of the current and next rounds, first seen per member.
    adverts: BTreeMap<u64, BTreeMap<[u8; 32], SignedAdvert>>,
    /// This node's secrets for one round: in memory only, never stored, never sent.
    pub(super) secrets: Option<(u64, MemberSecrets)>,
    /// Our trained delta waiting for the roster.
    pending: Option<Pending>,
    /// Per round: the verified selections, acknowledgements and the agreed selection.
    pub(super) selections: BTreeMap<u64, Agreement>,
    /// Verified reveals, first seen per round and member.
    pub(super) reveals: BTreeMap<u64, BTreeMap<[u8; 32], SignedReveal>>,
    /// Rounds this node revealed for (once each, for the first selection only).
    revealed: BTreeSet<u64>,
    /// Verified shares of silent members' self seeds, per round (`recovery`).
    pub(super) recoveries: BTreeMap<u64, super::recovery::Shares>,
    /// (round, member) whose self-seed share this node published (once each).
    pub(super) recovered: BTreeSet<(u64, [u8; 32])>,
    /// The last value entries with recovered seeds the proposer computed (not retried).
    attempted: Option<(u64, Vec<Vec<u8>>)>,
    /// Our own messages of the current round, re-sent until the round commits.
    own: Vec<(u64, SecAggMsg)>,
    /// When our messages last went out.
    sent: Millis,
    /// Actions produced where no action list is at hand (the proposer's selection and
    /// reveal); `Core::handle` appends them to its output.
    pub(super) outbox: Vec<Action>,
}

impl SecureState {
    /// Our acknowledgements of the current height, recovered from the WAL: a restarted
    /// validator acknowledges no second selection of a round (which could give two selections
    /// a quorum each), and sends its acknowledgement again.
    pub fn restore(&mut self, wal: &[Vec<u8>], me: &[u8; 32]) {
        for b in wal {
            if let Some(Ok(SecAggMsg::Ack(a))) = SecAggMsg::decode(b)
                && a.body.member == *me
            {
                let round = a.body.round;
                self.selections
                    .entry(round)
                    .or_default()
                    .restore(*me, a.body.selection);
                self.own.push((round, SecAggMsg::Ack(a)));
            }
        }
    }

    /// Forgets every round below `h`.
    pub fn prune(&mut self, h: u64) {
        self.adverts = self.adverts.split_off(&h);
        self.selections = self.selections.split_off(&h);
        self.reveals = self.reveals.split_off(&h);
        self.revealed = self.revealed.split_off(&h);
        self.recoveries = self.recoveries.split_off(&h);
        self.recovered = self.recovered.split_off(&(h, [0; 32]));
        if self.attempted.as_ref().is_some_and(|(r, _)| *r < h) {
            self.attempted = None;
        }
        self.own.retain(|(r, _)| *r >= h);
        if self.secrets.as_ref().is_some_and(|(r, _)| *r < h) {
            self.secrets = None;
        }
        if self.pending.as_ref().is_some_and(|p| p.round < h) {
            self.pending = None;
        }
    }
}

pub(super) fn adverts_of(payload: &MaskedPayload) -> Vec<Advert> {
    payload
        .roster
        .iter()
        .map(|a| Advert {
            member: a.body.member,
            public_key: a.body.public_key,
        })
        .collect()
}

/// Whether no claim exceeds `SAMPLE_CAP_FACTOR` times the lower median claim: then
/// `aggregate::bounded_weights` of the claims are exactly `samples / sum`.
pub fn within_cap(samples: &[u64]) -> bool {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let Some(median) = sorted.get(sorted.len().saturating_sub(1) / 2) else {
        return true;
    };
    let cap = median.saturating_mul(SAMPLE_CAP_FACTOR);
    samples.iter().all(|s| *s <= cap)
}

impl Core {
    /// The secure-aggregation settings, when on.
    pub(super) fn secure(&self) -> Option<SecureAggregation> {
        self.cfg.genesis.privacy.secure
    }

    pub(super) fn domain(&self, round: u64) -> Domain {
        Domain::new(self.cfg.genesis.chain_id.as_str(), round)
    }

    pub(super) fn publish_secagg(
        &mut self,
        now: Millis,
        round: u64,
        msg: SecAggMsg,
        out: &mut Vec<Action>,
    ) {
        if let Ok(bytes) = msg.encode(now) {
            self.telemetry.counters.delta_bytes_out += bytes.len() as u64;
            out.push(Action::Publish {
                topic: Topic::Deltas,
                bytes: bytes.into(),
            });
        }
        self.secure.own.push((round, msg));
    }

    /// Fresh secrets for `round`: publish our advert.
    pub(super) fn on_secrets(
        &mut self,
        now: Millis,
        round: u64,
        entropy: Entropy,
        out: &mut Vec<Action>,
    ) -> Result<()> {
        let h = self.committed.height() + 1;
        if round != h
            || self
                .secure
                .secrets
                .as_ref()
                .is_some_and(|(r, _)| *r == round)
        {
            return Ok(());
        }
        let (dh, seed) = entropy.0.split_at(32);
        let (Ok(dh), Ok(seed)) = (<[u8; 32]>::try_from(dh), <[u8; 32]>::try_from(seed)) else {
            return Ok(());
        };
        let secrets = MemberSecrets::from_bytes(dh, seed);
        let advert = SignedAdvert::new(
            AdvertBody {
                chain_id: self.cfg.genesis.chain_id.as_str().to_string(),
                round,
                member: self.me.0,
                public_key: secrets.public_key(),
            },
            &self.cfg.key,
        )?;
        self.secure.secrets = Some((round, secrets));
        self.secure
            .adverts
            .entry(round)
            .or_default()
            .insert(self.me.0, advert.clone());
        self.publish_secagg(now, round, SecAggMsg::Advert(advert), out);
        self.maybe_acknowledge(now, out)?;
        self.try_mask(now, out)
    }

    /// A secure-aggregation message from the network: advert, selection or reveal.
    pub(super) fn on_secagg_bytes(
        &mut self,
        now: Millis,
        data: &[u8],
        _from: Option<PeerId>,
        out: &mut Vec<Action>,
    ) -> Result<Verdict> {
        let Some(Ok(msg)) = SecAggMsg::decode(data) else {
            self.telemetry.counters.reject("malformed");
            return Ok(Verdict::Reject("malformed"));
        };
        let h = self.committed.height() + 1;
        let (round, signer) = match &msg {
            SecAggMsg::Advert(a) => (a.body.round, a.body.member),
            SecAggMsg::Selection(s) => (s.body.round, s.body.proposer),
            SecAggMsg::Reveal(r) => (r.body.round, r.body.member),
            SecAggMsg::Recovery(r) => (r.body.round, r.body.holder),
            SecAggMsg::Ack(a) => (a.body.round, a.body.member),
        };
        if round < h || round > h + super::pool::LOOKAHEAD {
            return Ok(Verdict::Ignore("secagg round not current"));
        }
        let set = self.committed.chain.set_for(round).clone();
        if !set.contains(&ValidatorId(signer)) {
            self.telemetry.counters.reject("not_validator");
            return Ok(Verdict::Reject("not_validator"));
        }
        let chain = self.cfg.genesis.chain_id.as_str().to_string();
        let verified = match &msg {
            SecAggMsg::Advert(a) => a.verify(&chain),
            SecAggMsg::Selection(s) => s.verify(&chain),
            SecAggMsg::Reveal(r) => r.verify(&chain),
            SecAggMsg::Recovery(r) => r.verify(&chain),
            SecAggMsg::Ack(a) => a.verify(&chain),
        };
        if verified.is_err() {
            self.telemetry.counters.reject("bad_signature");
            return Ok(Verdict::Reject("bad_signature"));
        }
        if signer == self.me.0 {
            return Ok(Verdict::Ignore("our own"));
        }
        let new = match msg {
            SecAggMsg::Advert(a) => {
                if model::secagg::low_order(&a.body.public_key) {
                    // Masking against it would fail on every honest node of the roster.
                    self.telemetry.counters.reject("bad_advert");
                    return Ok(Verdict::Reject("bad_advert"));
                }
                let held = self.secure.adverts.entry(round).or_default();
                !held.contains_key(&signer) && held.insert(signer, a).is_none()
            }
            SecAggMsg::Selection(s) => {
                let inc = &s.body.included;
                let ok = inc.len() >= set.quorum()
                    && inc.len() <= set.len()
                    && inc.windows(2).all(|w| w[0].author < w[1].author)
                    && inc.iter().all(|i| set.contains(&ValidatorId(i.author)));
                if !ok {
                    self.telemetry.counters.reject("bad_selection");
                    return Ok(Verdict::Reject("bad_selection"));
                }
                let agreement = self.secure.selections.entry(round).or_default();
                agreement.offer(s, now)
            }
            SecAggMsg::Ack(a) => {
                let agreement = self.secure.selections.entry(round).or_default();
                agreement.ack(signer, a.body.selection)
            }
            SecAggMsg::Reveal(r) => {
                let held = self.secure.reveals.entry(round).or_default();
                !held.contains_key(&signer) && held.insert(signer, r).is_none()
            }
            SecAggMsg::Recovery(r) => match self.on_recovery(round, r) {
                Verdict::Accept => true,
                Verdict::Ignore(_) => false,
                v => return Ok(v),
            },
        };
        if !new {
            return Ok(Verdict::Ignore("duplicate secagg message"));
        }
        if let Some(a) = self.secure.selections.get_mut(&round) {
            a.settle(&set, now);
        }
        if round == h {
            self.try_mask(now, out)?;
            self.maybe_acknowledge(now, out)?;
            self.maybe_reveal(now, out)?;
            self.maybe_recover(now, out)?;
            let mut follow = self.check_validations(out)?;
            follow.extend(self.try_propose(now)?);
            self.feed(now, follow, out)?;
        }
        Ok(Verdict::Accept)
    }

    /// Checks a masked delta's payload for `round` by `author` (see the module doc).
    pub(super) fn check_masked(
        &self,
        round: u64,
        author: &[u8; 32],
        payload: &[u8],
    ) -> Option<Arc<MaskedPayload>> {
        let p = MaskedPayload::decode(payload).ok()?;
        let set = self.committed.chain.set_for(round);
        let chain = self.cfg.genesis.chain_id.as_str();
        let roster_ok = !p.roster.is_empty()
            && p.roster.len() <= set.len()
            && p.roster
                .windows(2)
                .all(|w| w[0].body.member < w[1].body.member)
            && p.roster.iter().any(|a| a.body.member == *author)
            && p.roster.iter().all(|a| {
                a.body.round == round
                    && !model::secagg::low_order(&a.body.public_key)
                    && set.contains(&ValidatorId(a.body.member))
                    && a.verify(chain).is_ok()
            });
        let others: Vec<[u8; 32]> = p
            .roster
            .iter()
            .map(|a| a.body.member)
            .filter(|m| m != author)
            .collect();
        let commits: Vec<[u8; 32]> = p.pair_commits.iter().map(|(m, _)| *m).collect();
        let holders: Vec<[u8; 32]> = p.shares.iter().map(|s| s.holder).collect();
        let ok = roster_ok
            && p.values.len() == self.committed.params.len()
            && commits == others
            && holders == others;
        (ok && self.our_share_opens(round, author, &p)).then(|| Arc::new(p))
    }

    /// Masks and publishes our pending delta once the roster is known.
    pub(super) fn try_mask(&mut self, now: Millis, out: &mut Vec<Action>) -> Result<()> {
        let h = self.committed.height() + 1;
        let Some(sa) = self.secure() else {
            return Ok(());
        };
        let ready = self.secure.pending.as_ref().is_some_and(|p| p.round == h)
            && self.secure.secrets.as_ref().is_some_and(|(r, _)| *r == h);
        if !ready || self.local.own.as_ref().is_some_and(|o| o.round == h) {
            return Ok(());
        }
        let set = self.validators();
        let Some(adverts) = self.secure.adverts.get(&h) else {
            return Ok(());
        };
        let known = adverts
            .keys()
            .filter(|m| set.contains(&ValidatorId(**m)))
            .count();
        // Half the proposer's longest wait: members that mask against different rosters cannot
        // be summed together, so give every live member's advert time to arrive.
        let waited =
            now.saturating_sub(self.telemetry.started()) >= max_wait(&self.cfg.genesis) / 2;
        if known < set.len() && !(known >= set.quorum() && waited) {
            return Ok(());
        }
        let roster: Vec<SignedAdvert> = adverts
            .values()
            .filter(|a| set.contains(&ValidatorId(a.body.member)))
            .cloned()
            .collect();
        let (Some(pending), Some((_, secrets))) =
            (self.secure.pending.take(), self.secure.secrets.as_ref())
        else {
            return Ok(());
        };
        let ads: Vec<Advert> = roster
            .iter()
            .map(|a| Advert {
                member: a.body.member,
                public_key: a.body.public_key,
            })
            .collect();
        let g = &self.cfg.genesis;
        let q = Quantizer::new(sa.bound, ads.len())?;
        let w = pending.samples as f64 / g.max_samples as f64;
        let scaled: Vec<f32> = pending
            .delta
            .iter()
            .map(|x| (f64::from(*x) * w) as f32)
            .collect();
        let enc = q.encode(&scaled)?;
        if enc.clamped > 0 {
            tracing::warn!(
                round = h,
                clamped = enc.clamped,
                "secure aggregation clamped coordinates to privacy.secagg_bound"
            );
        }
        let m = model::secagg::mask(&self.domain(h), &ads, &self.me.0, secrets, &enc.values)?;
        let t = self.recovery_threshold(h, ads.len());
        let shares = model::secagg::share_self_seed(&self.domain(h), &ads, &self.me.0, secrets, t)?;
        let payload = MaskedPayload {
            roster,
            values: m.values,
            self_commit: m.self_commit,
            pair_commits: m.pair_commits,
            shares,
        }
        .encode()?;
        let msg = DeltaMsg {
            chain_id: g.chain_id.as_str().to_string(),
            round: h,
            base_hash: self.committed.chain.model_hash,
            author: self.me.0,
            samples: pending.samples,
            train_loss: 0.0,
            payload,
        };
        self.release(now, vec![msg], out)?;
        let follow: Vec<_> = self.try_propose(now)?.into_iter().collect();
        self.feed(now, follow, out)
    }

    /// A trained delta under secure aggregation: held until the roster is known.
    pub(super) fn hold_for_masking(
        &mut self,
        now: Millis,
        round: u64,
        mut delta: Vec<f32>,
        samples: u64,
        out: &mut Vec<Action>,
    ) -> Result<()> {
        // The same guard against a diverged delta as `prepare_update`.
        if delta.iter().any(|v| !v.is_finite()) {
            delta.iter_mut().for_each(|v| *v = 0.0);
        }
        self.secure.pending = Some(Pending {
            round,
            delta,
            samples,
        });
        self.try_mask(now, out)
    }

    /// Acknowledges the first selection of the current round we hold, while we acknowledged
    /// none (only in the round itself: the WAL that keeps it holds the current height only).
    fn maybe_acknowledge(&mut self, now: Millis, out: &mut Vec<Action>) -> Result<()> {
        let h = self.committed.height() + 1;
        let first = self
            .secure
            .selections
            .get(&h)
            .and_then(Agreement::unacknowledged);
        match first {
            Some(digest) => self.acknowledge(now, h, digest, out),
            None => Ok(()),
        }
    }

    /// Fixes `digest` as our one selection of `round` and, as a validator of that round,
    /// acknowledges it: written to the WAL, then published.
    fn acknowledge(
        &mut self,
        now: Millis,
        round: u64,
        digest: [u8; 32],
        out: &mut Vec<Action>,
    ) -> Result<()> {
        let set = self.committed.chain.set_for(round).clone();
        let agreement = self.secure.selections.entry(round).or_default();
        if !agreement.choose(digest, now) || !set.contains(&self.me) {
            return Ok(());
        }
        let ack = SignedAck::new(
            AckBody {
                chain_id: self.cfg.genesis.chain_id.as_str().to_string(),
                round,
                member: self.me.0,
                selection: digest,
            },
            &self.cfg.key,
        )?;
        let agreement = self.secure.selections.entry(round).or_default();
        agreement.ack(self.me.0, digest);
        agreement.settle(&set, now);
        // Durable before it leaves: after a crash we must not acknowledge another selection.
        let msg = SecAggMsg::Ack(ack);
        out.push(Action::AppendWal(msg.encode(0)?));
        self.publish_secagg(now, round, msg, out);
        Ok(())
    }

    /// Reveals for the round's agreed selection (`agreement`) if it includes our masked delta
    /// (once a round).
    fn maybe_reveal(&mut self, now: Millis, out: &mut Vec<Action>) -> Result<()> {
        let h = self.committed.height() + 1;
        if self.secure.revealed.contains(&h) {
            return Ok(());
        }
        let Some((sel, _)) = self.secure.selections.get(&h).and_then(Agreement::agreed) else {
            return Ok(());
        };
        let Some(own) = self.local.own.as_ref().filter(|o| o.round == h) else {
            return Ok(());
        };
        let mine = sel
            .body
            .included
            .iter()
            .any(|i| i.author == self.me.0 && own.signed(h, &i.digest));
        if !mine || sel.body.included.len() < self.validators().quorum() {
            return Ok(());
        }
        let Some(payload) = crate::wire::SignedDelta::decode(&own.bytes)
            .ok()
            .and_then(|d| MaskedPayload::decode(&d.msg.payload).ok())
        else {
            return Ok(());
        };
        let Some((_, secrets)) = self.secure.secrets.as_ref().filter(|(r, _)| *r == h) else {
            return Ok(());
        };
        if self.cfg.byzantine == Some(Byzantine::CrashBeforeReveal) {
            self.secure.revealed.insert(h);
            out.push(Action::Fatal(format!(
                "crash-before-reveal (a demonstration fault): selected for round {h}, \
                 stopping before the reveal"
            )));
            return Ok(());
        }
        let ids: Vec<[u8; 32]> = sel.body.included.iter().map(|i| i.author).collect();
        let r = match model::secagg::reveal(
            &self.domain(h),
            &adverts_of(&payload),
            &self.me.0,
            secrets,
            &ids,
        ) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(round = h, error = %e, "not revealing for this selection");
                return Ok(());
            }
        };
        let reveal = SignedReveal::new(
            RevealBody {
                chain_id: self.cfg.genesis.chain_id.as_str().to_string(),
                round: h,
                member: self.me.0,
                selection: sel.body.digest(),
                self_seed: r.self_seed,
                pair_seeds: r.pair_seeds,
            },
            &self.cfg.key,
        )?;
        self.secure.revealed.insert(h);
        self.secure
            .reveals
            .entry(h)
            .or_default()
            .insert(self.me.0, reveal.clone());
        self.publish_secagg(now, h, SecAggMsg::Reveal(reveal), out);
        Ok(())
    }

    /// Re-sends our messages of the round, masks, reveals (periodic).
    pub(super) fn secure_tick(&mut self, now: Millis, out: &mut Vec<Action>) -> Result<()> {
        if self.secure().is_none() {
            return Ok(());
        }
        let h = self.committed.height() + 1;
        if now.saturating_sub(self.secure.sent) >= super::local::REPUBLISH_MS {
            self.secure.sent = now;
            for (_, m) in self.secure.own.iter().filter(|(r, _)| *r == h) {
                if let Ok(bytes) = m.encode(now) {
                    out.push(Action::Publish {
                        topic: Topic::Deltas,
                        bytes: bytes.into(),
                    });
                }
            }
        }
        self.try_mask(now, out)?;
        self.maybe_acknowledge(now, out)?;
        self.maybe_reveal(now, out)?;
        self.maybe_recover(now, out)
    }

    /// The reveals of every included member for this included set, in its order.
    fn reveals_for(&self, h: u64, included: &[Included]) -> Option<Vec<Vec<u8>>> {
        let digest = selection_digest(self.cfg.genesis.chain_id.as_str(), h, included);
        let held = self.secure.reveals.get(&h)?;
        included
            .iter()
            .map(|i| {
                held.get(&i.author)
                    .filter(|r| r.body.selection == digest)
                    .and_then(|r| r.encode().ok())
            })
            .collect()
    }

    /// The round's result from masked deltas and reveals; a void round (no reveals) leaves
    /// the model as it was. `None` when a delta is missing or anything does not check out.
    pub(super) fn compute_secure(
        &self,
        round: u64,
        included: &[Included],
        reveals: &[Vec<u8>],
    ) -> Result<Option<Applied>> {
        let Some(sa) = self.secure() else {
            return Ok(None);
        };
        let mut inputs = Vec::with_capacity(included.len());
        let mut payloads = Vec::with_capacity(included.len());
        let mut roster: Option<Vec<RosterKey>> = None;
        let mut ads = Vec::new();
        for inc in included {
            let Some(p) = self.pool.held(round, inc).and_then(|d| d.masked.clone()) else {
                return Ok(None);
            };
            let keys = p.roster_keys();
            if roster.as_ref().is_some_and(|r| *r != keys) {
                return Ok(None);
            }
            if roster.is_none() {
                ads = adverts_of(&p);
                roster = Some(keys);
            }
            inputs.push(model::secagg::Masked {
                member: inc.author,
                values: p.values.clone(),
                self_commit: p.self_commit,
                pair_commits: p.pair_commits.clone(),
            });
            payloads.push(p);
        }
        let claims: Vec<u64> = included.iter().map(|i| i.samples).collect();
        if !within_cap(&claims) {
            return Ok(None);
        }
        if reveals.is_empty() {
            return Ok(Some(Applied {
                params: self.committed.params.clone(),
                velocity: self.committed.velocity.clone(),
                rejected: Vec::new(),
            }));
        }
        let chain = self.cfg.genesis.chain_id.as_str();
        let digest = selection_digest(chain, round, included);
        if reveals.len() != included.len() {
            return Ok(None);
        }
        let mut plain = Vec::with_capacity(reveals.len());
        for ((bytes, inc), p) in reveals.iter().zip(included).zip(&payloads) {
            if let Some(rec) = RecoveredSeed::decode(bytes) {
                let Some(r) = rec.ok().and_then(|rec| {
                    self.reveal_from_shares(round, inc, p, &digest, included, &rec)
                }) else {
                    return Ok(None);
                };
                plain.push(r);
                continue;
            }
            let Ok(r) = SignedReveal::decode(bytes) else {
                return Ok(None);
            };
            let b = &r.body;
            if r.verify(chain).is_err()
                || b.round != round
                || b.member != inc.author
                || b.selection != digest
            {
                return Ok(None);
            }
            plain.push(Reveal {
                member: b.member,
                self_seed: b.self_seed,
                pair_seeds: b.pair_seeds.clone(),
            });
        }
        let sum = match model::secagg::unmask(&self.domain(round), &ads, &inputs, &plain) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(round, error = %e, "unmasking failed");
                return Ok(None);
            }
        };
        let q = Quantizer::new(sa.bound, ads.len())?;
        let sum = q.decode_sum(&sum, inputs.len())?;
        let max = self.cfg.genesis.max_samples as f64;
        let weight: f64 = claims.iter().map(|s| *s as f64 / max).sum();
        let mean: Vec<f32> = sum.iter().map(|s| (s / weight) as f32).collect();
        let mut params = self.committed.params.to_vec();
        let mut velocity = self.committed.velocity.to_vec();
        model::sim::apply_round(
            &mut params,
            &mut velocity,
            &self.cfg.genesis.rule,
            &self.cfg.genesis.server,
            self.cfg.genesis.lowpass.as_ref(),
            &[Contribution {
                delta: &mean,
                samples: 1,
            }],
        )?;
        Ok(Some(Applied {
            params: Arc::new(params),
            velocity: Arc::new(velocity),
            rejected: Vec::new(),
        }))
    }

    /// The included set a proposer fixes: the largest group of usable masked deltas sharing
    /// one roster (ties: the first roster in order), without claims above the cap.
    fn choose_selection(&self, h: u64) -> Vec<Included> {
        let base = self.committed.chain.model_hash;
        let set = self.validators();
        let mut groups: BTreeMap<Vec<RosterKey>, Vec<Included>> = BTreeMap::new();
        for (a, d) in self.pool.usable(h, &base) {
            let Some(p) = d.masked.as_ref() else { continue };
            if set.contains(&ValidatorId(a)) {
                groups.entry(p.roster_keys()).or_default().push(Included {
                    author: a,
                    digest: d.digest,
                    samples: d.samples,
                });
            }
        }
        let mut best = Vec::new();
        for g in groups.into_values() {
            if g.len() > best.len() {
                best = g;
            }
        }
        // Drop claims above the cap until none is (dropping lowers the set, never raises it).
        while !within_cap(&best.iter().map(|i| i.samples).collect::<Vec<_>>()) {
            let max = best.iter().map(|i| i.samples).max().unwrap_or(0);
            best.retain(|i| i.samples < max);
        }
        best.sort_by_key(|i| i.author);
        best
    }

    /// The proposer under secure aggregation: fix (or adopt) the selection, wait for its
    /// reveals, then propose; or propose the round void once it cannot finish.
    pub(super) fn try_propose_secure(&mut self, now: Millis) -> Result<Option<Input>> {
        let Some((height, view)) = self.height.pending_propose else {
            return Ok(None);
        };
        let h = self.committed.height() + 1;
        let propose_ms = self.cfg.genesis.file.timeouts.propose_ms;
        let wait = max_wait(&self.cfg.genesis);
        let elapsed = now.saturating_sub(self.telemetry.started());
        let late = elapsed >= propose_ms;
        let adopted = self
            .secure
            .selections
            .get(&h)
            .and_then(|a| a.agreed().or_else(|| a.first()))
            .map(|(s, at)| (s.body.included.clone(), at));
        let (included, since) = match adopted {
            Some(adopted) => adopted,
            None if self
                .secure
                .selections
                .get(&h)
                .is_some_and(Agreement::chosen) =>
            {
                // We acknowledged a selection before a restart and do not hold it again yet:
                // never sign a second one; give the round up as when no quorum shares a roster.
                if elapsed >= 2 * propose_ms {
                    let a = self.void_applied();
                    return self.finish_proposal(height, view, Vec::new(), a, Vec::new());
                }
                return Ok(None);
            }
            None => {
                let chosen = self.choose_selection(h);
                let authors: Vec<[u8; 32]> = chosen.iter().map(|i| i.author).collect();
                if chosen.len() < self.validators().quorum() || !self.window_closed(now, &authors) {
                    if elapsed >= 2 * propose_ms {
                        // No quorum shares a roster: give the round up.
                        let a = self.void_applied();
                        return self.finish_proposal(height, view, Vec::new(), a, Vec::new());
                    }
                    return Ok(None);
                }
                let sel = SignedSelection::new(
                    SelectionBody {
                        chain_id: self.cfg.genesis.chain_id.as_str().to_string(),
                        round: h,
                        proposer: self.me.0,
                        included: chosen.clone(),
                    },
                    &self.cfg.key,
                )?;
                tracing::info!(
                    round = h,
                    included = chosen.len(),
                    "secure aggregation: selection"
                );
                let digest = sel.body.digest();
                self.secure
                    .selections
                    .entry(h)
                    .or_default()
                    .offer(sel.clone(), now);
                let mut out = Vec::new();
                self.publish_secagg(now, h, SecAggMsg::Selection(sel), &mut out);
                self.acknowledge(now, h, digest, &mut out)?;
                self.secure.outbox.extend(out);
                (chosen, now)
            }
        };
        let mut out = Vec::new();
        self.maybe_reveal(now, &mut out)?;
        self.maybe_recover(now, &mut out)?;
        self.secure.outbox.extend(out);
        if let Some(reveals) = self.reveals_for(h, &included)
            && let Some(applied) = self.compute_secure(h, &included, &reveals)?
        {
            return self.finish_proposal(height, view, included, applied, reveals);
        }
        // A silent member's seed from its shares (each set of entries is tried once).
        if let Some(entries) = self.recovered_for(h, &included)
            && self.secure.attempted.as_ref() != Some(&(h, entries.clone()))
        {
            self.secure.attempted = Some((h, entries.clone()));
            if let Some(applied) = self.compute_secure(h, &included, &entries)? {
                tracing::info!(
                    round = h,
                    "secure aggregation: a silent member's seed recovered"
                );
                return self.finish_proposal(height, view, included, applied, entries);
            }
        }
        if late && now.saturating_sub(since) >= wait {
            tracing::warn!(
                round = h,
                "secure aggregation: reveals missing; the round is void"
            );
            let a = self.void_applied();
            return self.finish_proposal(height, view, included, a, Vec::new());
        }
        Ok(None)
    }

    fn void_applied(&self) -> Applied {
        Applied {
            params: self.committed.params.clone(),
            velocity: self.committed.velocity.clone(),
            rejected: Vec::new(),
        }
    }
}
