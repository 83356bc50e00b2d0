//! The round's application logic: building the proposal, validating a proposed value, computing
//! the deterministic aggregate, and writing a decided round. No state of its own: it reads the
//! pool and the committed model, and leaves its results in the height state.
//!
//! When to propose (the collect window). The proposer proposes as soon as it holds a usable delta
//! from every validator it has heard from lately (a valid delta for one of the last
//! [`ACTIVITY_WINDOW`](super::committed::ACTIVITY_WINDOW) rounds): a down validator costs nothing.
//! Otherwise, once it holds a quorum, it waits until `collect_ms` after its own delta and until
//! the slowest awaited author's usual arrival time (observed, with a quarter's margin), but never
//! past [`max_wait`]: a slow honest node is waited for, a dead one is not.

use std::sync::Arc;

use anyhow::Result;
use consensus::{Input, Message, ValidatorId, Value, ValueId, decode_message, encode_message};
use model::aggregate::Contribution;

use super::committed::MAX_CONTRIBUTORS;
use super::height::PendingCommit;
use super::{Action, Byzantine, Core, Millis};
use crate::keys::hex;
use crate::wire::{
    Aggregation, DeltaEvidence, Included, LedgerEntry, RoundValue, SignedJoin, momentum_hash,
};

/// At most this many validators are admitted per round (and never more than the admission
/// bound of `Committed::admissible_joins`).
pub const MAX_JOINS_PER_ROUND: usize = 4;
/// The round value format: 2 added removals, 3 delta equivocation evidence, 4 promotions and
/// rejected authors, 5 proof of work in join requests, 6 the aggregation with secure
/// aggregation's reveals.
pub const VALUE_VERSION: u8 = 6;
/// A join request may be admitted for at most this many rounds after it was made.
pub const JOIN_TTL: u64 = 64;

/// The result of recomputing a value's aggregate.
#[derive(Clone)]
pub struct Applied {
    /// Parameters after the round.
    pub params: Arc<Vec<f32>>,
    /// Server momentum after the round.
    pub velocity: Arc<Vec<f32>>,
    /// Authors of the included deltas that are outliers against the aggregate (sorted).
    pub rejected: Vec<[u8; 32]>,
}

/// An included delta farther from the aggregate than this many times the median distance is
/// recorded as rejected (reputation).
pub const OUTLIER_FACTOR: f64 = 3.0;

/// The longest the proposer waits for stragglers once it holds a quorum, from the height's start:
/// half the view-0 propose timeout (so the others do not time out first), at most 8 windows.
pub fn max_wait(genesis: &crate::genesis::Genesis) -> Millis {
    let t = &genesis.file.timeouts;
    (t.collect_ms * 8).min(t.propose_ms / 2).max(t.collect_ms)
}

impl Core {
    /// Recomputes `theta + server_step(rule(deltas))` for an inclusion list; `None` when a
    /// delta is missing.
    pub(super) fn compute(&self, round: u64, included: &[Included]) -> Result<Option<Applied>> {
        let mut inputs = Vec::with_capacity(included.len());
        for inc in included {
            let Some(d) = self.pool.held(round, inc) else {
                return Ok(None);
            };
            inputs.push(Contribution {
                delta: d.decoded.as_slice(),
                samples: inc.samples,
            });
        }
        // Contributors' deltas count as Byzantine on top of the f validators the quorum
        // tolerates (`Committed::contributor_room` keeps the total below half the inputs).
        let set = self.committed.chain.set_for(round);
        let contributors = included
            .iter()
            .filter(|i| !set.contains(&ValidatorId(i.author)))
            .count();
        let rule = if contributors == 0 {
            self.cfg.genesis.rule.clone()
        } else {
            self.cfg
                .genesis
                .rule
                .assuming(set.max_faulty() + contributors)
        };
        let mut params = self.committed.params.to_vec();
        let mut velocity = self.committed.velocity.to_vec();
        let aggregate = model::sim::apply_round(
            &mut params,
            &mut velocity,
            &rule,
            &self.cfg.genesis.server,
            self.cfg.genesis.lowpass.as_ref(),
            &inputs,
        )?;
        let mut rejected: Vec<[u8; 32]> =
            model::aggregate::outliers(&inputs, &aggregate, OUTLIER_FACTOR)
                .into_iter()
                .map(|i| included[i].author)
                .collect();
        rejected.sort();
        Ok(Some(Applied {
            params: Arc::new(params),
            velocity: Arc::new(velocity),
            rejected,
        }))
    }

    /// The result of a value's included deltas: the plain rule, or under secure aggregation
    /// the unmasked mean (`reveals` empty: a void round).
    pub(super) fn compute_value(
        &self,
        round: u64,
        included: &[Included],
        reveals: &[Vec<u8>],
    ) -> Result<Option<Applied>> {
        if self.secure().is_some() {
            self.compute_secure(round, included, reveals)
        } else if reveals.is_empty() {
            self.compute(round, included)
        } else {
            Ok(None)
        }
    }

    /// Whether the collect window is closed for a proposer holding `held` (see the module doc).
    pub(super) fn window_closed(&self, now: Millis, held: &[[u8; 32]]) -> bool {
        let set = self.validators();
        if held.len() >= set.len() {
            return true;
        }
        if held.len() < set.quorum() {
            return false;
        }
        let h = self.committed.height() + 1;
        let window = super::committed::ACTIVITY_WINDOW as u64;
        let waiting: Vec<&ValidatorId> = set
            .members()
            .iter()
            .filter(|m| !held.contains(&m.0) && self.telemetry.recently_heard(&m.0, h, window))
            .collect();
        if waiting.is_empty() {
            return true;
        }
        let started = self.telemetry.started();
        let elapsed = now.saturating_sub(started);
        if elapsed >= max_wait(&self.cfg.genesis) {
            return true;
        }
        let own = self.collect_passed(now);
        let usual = waiting
            .iter()
            .map(|m| self.telemetry.usual_arrival(&m.0))
            .max()
            .unwrap_or(Some(0));
        // An author never seen yet has no usual time: the window then rests on our own delta.
        let stragglers = usual.is_none_or(|u| elapsed >= u + u / 4);
        own && stragglers
    }

    /// Whether `collect_ms` passed since our own delta of this height was trained.
    fn collect_passed(&self, now: Millis) -> bool {
        let collect = self.cfg.genesis.file.timeouts.collect_ms;
        self.local
            .trained_at
            .is_some_and(|t| now.saturating_sub(t) >= collect)
    }

    /// Whether the proposer should keep the window open for a contributor (under `open`):
    /// there is room for one, none is held, and one that sent a delta within the last
    /// [`ACTIVITY_WINDOW`](super::committed::ACTIVITY_WINDOW) rounds (on time or late) is due:
    /// until its usual arrival with a quarter's margin, or, never seen on time, until
    /// `collect_ms` after our own delta; never past [`max_wait`]. A contributor whose usual
    /// arrival is more than `collect_ms` after the slowest validator's is not waited for: a
    /// join key costs little, so a contributor that is always late (on purpose or not) slows
    /// a round by at most about `collect_ms`. Without the wait a contributor that learns of
    /// each commit a hop after the validators lost every race against the last validator's
    /// delta, was never included, and was never promoted (the e2e join test timed out once in
    /// CI and took 14-29 s in 3 of about 15 runs here).
    pub(super) fn contributor_due(
        &self,
        now: Millis,
        contributors: &[[u8; 32]],
        validators_held: usize,
        contributors_held: usize,
    ) -> bool {
        let h = self.committed.height() + 1;
        let room = self.committed.contributor_room(h, validators_held);
        if room == 0 || contributors_held >= room {
            return false;
        }
        let elapsed = now.saturating_sub(self.telemetry.started());
        if elapsed >= max_wait(&self.cfg.genesis) {
            return false;
        }
        let own_waited = self.collect_passed(now);
        let collect = self.cfg.genesis.file.timeouts.collect_ms;
        let latest = self
            .validators()
            .members()
            .iter()
            .filter_map(|m| self.telemetry.usual_arrival(&m.0))
            .max()
            .unwrap_or(0)
            .saturating_add(collect);
        let window = super::committed::ACTIVITY_WINDOW as u64;
        contributors.iter().any(|k| {
            self.telemetry.heard_within(k, h, window)
                && match self.telemetry.usual_arrival(k) {
                    Some(u) => u <= latest && elapsed < u + u / 4,
                    None => !own_waited,
                }
        })
    }

    /// If this node must propose and the window is closed, builds the value.
    pub(super) fn try_propose(&mut self, now: Millis) -> Result<Option<Input>> {
        let Some((height, view)) = self.height.pending_propose else {
            return Ok(None);
        };
        let h = self.committed.height() + 1;
        if height.0 != h {
            self.height.pending_propose = None;
            return Ok(None);
        }
        if self.secure().is_some() {
            return self.try_propose_secure(now);
        }
        let base = self.committed.chain.model_hash;
        let set = self.validators();
        let usable: Vec<Included> = self
            .pool
            .usable(h, &base)
            .iter()
            .map(|(a, d)| Included {
                author: *a,
                digest: d.digest,
                samples: d.samples,
            })
            .collect();
        let (mut included, offered): (Vec<Included>, Vec<Included>) = usable
            .into_iter()
            .partition(|i| set.contains(&ValidatorId(i.author)));
        let authors: Vec<[u8; 32]> = included.iter().map(|i| i.author).collect();
        let contributors = self.committed.contributors(h);
        let mut offered: Vec<Included> = offered
            .into_iter()
            .filter(|i| contributors.contains(&i.author))
            .collect();
        if !self.window_closed(now, &authors)
            || self.contributor_due(now, &contributors, authors.len(), offered.len())
        {
            return Ok(None);
        }
        // Contributors take turns: a rotation by height over those that sent a delta.
        let room = self.committed.contributor_room(h, included.len());
        if !offered.is_empty() {
            let turn = (h % offered.len() as u64) as usize;
            offered.rotate_left(turn);
        }
        included.extend(offered.into_iter().take(room));
        included.sort_by_key(|i| i.author);
        let Some(applied) = self.compute(h, &included)? else {
            return Ok(None);
        };
        self.finish_proposal(height, view, included, applied, Vec::new())
    }

    /// The value of a proposal with these included deltas and their result: membership changes
    /// (evidence, removals, promotions, joins) added, as every validator will check them.
    pub(super) fn finish_proposal(
        &mut self,
        height: consensus::Height,
        view: consensus::View,
        included: Vec<Included>,
        applied: Applied,
        reveals: Vec<Vec<u8>>,
    ) -> Result<Option<Input>> {
        let h = self.committed.height() + 1;
        let base = self.committed.chain.model_hash;
        let next = self.committed.chain.set_for(h + 1);
        let evidence: Vec<(consensus::Evidence, [u8; 32])> = self
            .local
            .evidence
            .iter()
            .filter(|(o, _)| next.contains(&ValidatorId(**o)))
            .map(|(o, e)| (e.clone(), *o))
            .collect();
        let delta_evidence: Vec<DeltaEvidence> = self
            .local
            .delta_evidence
            .iter()
            .filter(|(o, _)| {
                next.contains(&ValidatorId(**o)) && !evidence.iter().any(|(_, e)| e == *o)
            })
            .map(|(_, e)| e.clone())
            .collect();
        let mut removals = self.committed.due_removals(h);
        removals.extend(evidence.iter().map(|(_, o)| *o));
        removals.extend(delta_evidence.iter().map(DeltaEvidence::author));
        removals.sort();
        removals.dedup();
        if self.cfg.byzantine == Some(Byzantine::LyingRemovals) {
            // Demonstration: keep the due ones in, throw another validator out.
            removals = next
                .members()
                .iter()
                .map(|m| m.0)
                .filter(|m| *m != self.me.0)
                .take(1)
                .collect();
        }
        let promotions = self.committed.due_promotions(h, &removals);
        let room = self.join_room(h, removals.len());
        let approve = self.cfg.genesis.file.membership.policy == "approve";
        let mut approvals = Vec::new();
        let mut joins: Vec<SignedJoin> = Vec::new();
        // Oldest request first: a flood of fresh requests does not starve earlier joiners.
        let mut pending: Vec<&SignedJoin> = self.local.pending_joins.values().collect();
        pending.sort_by_key(|j| (j.round, j.validator));
        for j in pending {
            if joins.len() >= room || !self.join_admissible(j, h) {
                continue;
            }
            if approve {
                let Some(a) = self.approvals_for(j, h) else {
                    continue;
                };
                approvals.extend(a);
            }
            joins.push(j.clone());
        }
        joins.sort_by_key(|j| j.validator);
        approvals.sort_by_key(|a| (a.joiner, a.validator));
        let rv = RoundValue {
            version: VALUE_VERSION,
            round: h,
            base_hash: base,
            included,
            aggregation: Aggregation {
                rule: self.cfg.genesis.rule.to_string(),
                reveals,
            },
            model_hash: model::params::hash_params(&applied.params),
            momentum_hash: momentum_hash(&applied.velocity),
            prev_value: self.committed.chain.last_value,
            joins,
            removals,
            evidence: evidence
                .iter()
                .filter_map(|(e, _)| encode_message(&Message::Evidence(e.clone())).ok())
                .collect(),
            delta_evidence,
            approvals,
            promotions,
            rejected: applied.rejected.clone(),
        };
        let bytes = rv.encode()?;
        if bytes.len() > consensus::MAX_VALUE_BYTES {
            // Consensus refuses a larger value, and its error would stop the node. Under secure
            // aggregation the reveals grow with the roster; the round waits for its timeouts.
            tracing::warn!(
                round = h,
                bytes = bytes.len(),
                "the round's value exceeds consensus's limit; not proposing it"
            );
            self.height.pending_propose = None;
            return Ok(None);
        }
        let value = Value(bytes);
        self.height.applied.insert(value.id(), applied);
        self.height.pending_propose = None;
        tracing::info!(
            round = h,
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

    /// The offenders of a value's evidence for height `h`, when every item (consensus or delta
    /// equivocation evidence) is valid and against a distinct member of the set the value
    /// changes (that of `h + 1`); `None` otherwise.
    fn evidence_offenders(&self, h: u64, rv: &RoundValue) -> Option<Vec<[u8; 32]>> {
        let evidence = &rv.evidence;
        let chain = &self.committed.chain;
        let next = chain.set_for(h + 1);
        let mut offenders = Vec::new();
        for bytes in evidence {
            let Ok(Message::Evidence(e)) = decode_message(bytes) else {
                return None;
            };
            let o = e.offender();
            let set = chain.set_for(e.height().0);
            let ok = e
                .verify(set, &self.cfg.genesis.chain_id, &consensus::Ed25519Verifier)
                .is_ok();
            if !ok || !next.contains(&o) || offenders.contains(&o.0) {
                return None;
            }
            offenders.push(o.0);
        }
        let chain_id = self.cfg.genesis.chain_id.as_str();
        for e in &rv.delta_evidence {
            let o = e.author();
            if e.check(chain_id).is_err()
                || !next.contains(&ValidatorId(o))
                || offenders.contains(&o)
            {
                return None;
            }
            offenders.push(o);
        }
        Some(offenders)
    }

    /// Holds checked delta equivocation evidence for a later value (one per offender, bounded by
    /// the validator count).
    pub(super) fn hold_delta_evidence(&mut self, e: &DeltaEvidence) {
        let o = e.author();
        if self
            .committed
            .chain
            .set_for(self.committed.height() + 2)
            .contains(&ValidatorId(o))
            && self.local.delta_evidence.len() < consensus::MAX_VALIDATORS
        {
            self.local
                .delta_evidence
                .entry(o)
                .or_insert_with(|| e.clone());
        }
    }

    /// Holds verified consensus evidence for a later value (one per offender, bounded by the
    /// validator count).
    pub(super) fn hold_evidence(&mut self, e: &consensus::Evidence) {
        let o = e.offender();
        if self
            .committed
            .chain
            .set_for(self.committed.height() + 2)
            .contains(&o)
            && self.local.evidence.len() < consensus::MAX_VALIDATORS
        {
            self.local.evidence.entry(o.0).or_insert_with(|| e.clone());
        }
    }

    /// How many join requests a value for height `h` that removes `removals` validators may
    /// admit: under `open` contributors (while fewer than [`MAX_CONTRIBUTORS`] are active),
    /// otherwise validators within the admission bound.
    fn join_room(&self, h: u64, removals: usize) -> usize {
        if self.cfg.genesis.file.membership.contributors_first() {
            MAX_CONTRIBUTORS
                .saturating_sub(self.committed.contributors(h).len())
                .min(MAX_JOINS_PER_ROUND)
        } else {
            self.committed
                .admissible_joins(h, removals, MAX_JOINS_PER_ROUND)
        }
    }

    /// Whether a value for height `h` may admit `j`: signed for this chain, carrying the
    /// genesis' proof of work, made at or before
    /// `h` and after any removal of its key (no replay of an older request), not expired, with
    /// a bounded lifetime, and not already a validator of the set it would join.
    pub(super) fn join_admissible(&self, j: &SignedJoin, h: u64) -> bool {
        let chain = &self.committed.chain;
        let removed = chain.tenure.removed.get(&j.validator).copied();
        self.cfg.genesis.file.membership.admits()
            && j.verify(self.cfg.genesis.chain_id.as_str()).is_ok()
            && j.work_bits() >= self.cfg.genesis.file.membership.join_work_bits
            && j.round < h
            && j.expires >= h
            && j.expires.saturating_sub(j.round) <= JOIN_TTL
            && removed.is_none_or(|r| j.round > r)
            && !chain.set_for(h + 1).contains(&ValidatorId(j.validator))
            && !chain.tenure.contributors.contains_key(&j.validator)
    }

    /// Decides pending validations whose deltas are all here; fetches missing ones.
    pub(super) fn check_validations(&mut self, out: &mut Vec<Action>) -> Result<Vec<Input>> {
        let mut verdicts = Vec::new();
        for (id, value) in std::mem::take(&mut self.height.pending_validate) {
            match self.validate(&id, &value, out)? {
                Some(valid) => verdicts.push(Input::ValueVerdict { id, valid }),
                None => self.height.pending_validate.push((id, value)),
            }
        }
        Ok(verdicts)
    }

    /// `Some(valid)` when decided, `None` while deltas are missing.
    fn validate(
        &mut self,
        id: &ValueId,
        value: &Value,
        out: &mut Vec<Action>,
    ) -> Result<Option<bool>> {
        if self.height.applied.contains_key(id) {
            return Ok(Some(true));
        }
        let Ok(rv) = RoundValue::decode(&value.0) else {
            return Ok(Some(false));
        };
        let h = self.committed.height() + 1;
        let set = self.validators();
        let g = &self.cfg.genesis;
        let sorted = rv.included.windows(2).all(|w| w[0].author < w[1].author);
        let from_validators = rv
            .included
            .iter()
            .filter(|i| set.contains(&ValidatorId(i.author)))
            .count();
        let contributors = self.committed.contributors(h);
        let from_contributors = rv
            .included
            .iter()
            .filter(|i| contributors.contains(&i.author))
            .count();
        let members = from_validators + from_contributors == rv.included.len()
            && from_contributors <= self.committed.contributor_room(h, from_validators);
        let samples_ok = rv
            .included
            .iter()
            .all(|i| i.samples > 0 && i.samples <= g.max_samples);
        // Under secure aggregation a round may be void (see `secure`): no reveals, no change.
        let void = g.privacy.secure.is_some() && rv.aggregation.reveals.is_empty();
        if rv.version != VALUE_VERSION
            || rv.round != h
            || rv.base_hash != self.committed.chain.model_hash
            || rv.prev_value != self.committed.chain.last_value
            || rv.aggregation.rule != g.rule.to_string()
            || !sorted
            || !members
            || !samples_ok
            || (from_validators < set.quorum() && !void)
        {
            return Ok(Some(false));
        }
        // Membership: exactly the due removals and the offenders of valid evidence, and joins
        // within the admission bound.
        let Some(offenders) = self.evidence_offenders(h, &rv) else {
            tracing::warn!(round = h, "proposed evidence is invalid");
            return Ok(Some(false));
        };
        let mut due = self.committed.due_removals(h);
        due.extend(offenders);
        due.sort();
        due.dedup();
        if rv.removals != due {
            tracing::warn!(round = h, "proposed removals are not the due ones");
            return Ok(Some(false));
        }
        if rv.promotions != self.committed.due_promotions(h, &rv.removals) {
            tracing::warn!(round = h, "proposed promotions are not the due ones");
            return Ok(Some(false));
        }
        let room = self.join_room(h, rv.removals.len());
        let joins_ok = rv.joins.len() <= room
            && rv.joins.windows(2).all(|w| w[0].validator < w[1].validator)
            && rv.joins.iter().all(|j| self.join_admissible(j, h))
            && self.approvals_ok(h, &rv.joins, &rv.approvals);
        if !joins_ok {
            return Ok(Some(false));
        }
        if rv.included.iter().any(|inc| {
            self.pool
                .held(h, inc)
                .is_some_and(|d| d.samples != inc.samples)
        }) {
            return Ok(Some(false));
        }
        if rv.included.iter().any(|i| self.pool.held(h, i).is_none()) {
            self.fetch_missing(h, &rv.included, out);
            return Ok(None);
        }
        let Some(applied) = self.compute_value(h, &rv.included, &rv.aggregation.reveals)? else {
            return Ok(Some(false));
        };
        let ok = model::params::hash_params(&applied.params) == rv.model_hash
            && momentum_hash(&applied.velocity) == rv.momentum_hash
            && applied.rejected == rv.rejected;
        if ok {
            self.height.applied.insert(*id, applied);
        } else {
            tracing::warn!(round = h, "proposed aggregate hash does not match ours");
        }
        Ok(Some(ok))
    }

    /// Writes a decided round once its deltas are here: the ledger entry first (durable), then
    /// the state; the node acts on the commit only after both.
    pub(super) fn try_finish_commit(&mut self, now: Millis, out: &mut Vec<Action>) -> Result<()> {
        let Some(pc) = self.height.pending_commit.as_ref() else {
            return Ok(());
        };
        let h = self.committed.height() + 1;
        if pc.height != h {
            self.height.pending_commit = None;
            return Ok(());
        }
        let id = pc.value.id();
        let rv = RoundValue::decode(&pc.value.0)?;
        let applied = match self.height.applied.get(&id).cloned() {
            Some(a) => Some(a),
            None => self.compute_value(h, &rv.included, &rv.aggregation.reveals)?,
        };
        let Some(a) = applied.filter(|a| model::params::hash_params(&a.params) == rv.model_hash)
        else {
            self.fetch_missing(h, &rv.included, out);
            return Ok(());
        };
        let Some(PendingCommit {
            value, certificate, ..
        }) = self.height.pending_commit.take()
        else {
            return Ok(());
        };
        let entry = LedgerEntry {
            height: h,
            value: value.0,
            certificate: consensus::encode_certificate(&certificate)
                .map_err(|e| anyhow::anyhow!("certificate encode: {e}"))?,
        };
        let rv = self.committed.chain.apply(&entry, &self.cfg.genesis)?;
        out.push(Action::AppendLedger(entry.clone()));
        let contributors_first = self.cfg.genesis.file.membership.contributors_first();
        for j in &rv.joins {
            self.local.pending_joins.remove(&j.validator);
            if contributors_first {
                tracing::info!(round = h, contributor = %hex(&j.validator), "contributor admitted");
            } else {
                tracing::info!(round = h, validator = %hex(&j.validator), "validator admitted");
            }
        }
        for p in &rv.promotions {
            tracing::info!(round = h, validator = %hex(p), "contributor promoted to validator");
        }
        for r in &rv.removals {
            self.local.evidence.remove(r);
            self.local.delta_evidence.remove(r);
            tracing::warn!(round = h, validator = %hex(r), "validator removed (downtime or equivocation)");
            if *r == self.me.0 {
                tracing::error!(
                    round = h,
                    "this node was removed for downtime; restart it with --join to ask for admission again"
                );
            }
        }
        // Requests that can no longer be admitted.
        self.local.pending_joins.retain(|_, j| j.expires > h);
        out.push(Action::ResetWal);
        self.committed
            .advance(entry, &rv, a.params.clone(), a.velocity.clone());
        out.push(Action::WriteState(self.committed.state_body()));
        self.sync_committed();
        self.after_commit(now, &rv, out);
        self.schedule_start();
        Ok(())
    }

    /// Checkpoint and the commit report, after the state is stored.
    pub(super) fn after_commit(&mut self, now: Millis, rv: &RoundValue, out: &mut Vec<Action>) {
        let round = self.committed.height();
        let every = self.cfg.genesis.file.checkpoint_every;
        if every > 0 && round.is_multiple_of(every) {
            out.push(Action::WriteCheckpoint {
                round,
                params: self.committed.params.clone(),
            });
        }
        let report = self.telemetry.committed(
            now,
            round,
            rv,
            self.committed.chain.model_hash,
            self.committed.params.clone(),
            self.local.train_secs,
        );
        out.push(Action::Committed(report));
    }
}
