//! The `approve` admission policy: a join request waits until the operators of a quorum of the
//! current validators approve its key, and the value that admits it carries those approvals, so
//! every node checks them from the value alone.
//!
//! Each operator lists the keys it approves (`cohort approve KEY`, an allow-list file the shell
//! reads and passes in as [`super::Event::Approve`]). While a listed key has a pending join
//! request, this node (if a validator) signs an approval at its committed round and publishes it
//! every [`super::local::JOIN_RETRY_MS`]; approvals from others are kept only for pending joins
//! and current validators, so memory is bounded by `MAX_PENDING_JOINS * MAX_VALIDATORS`.
//! An approval is usable for [`JOIN_TTL`] rounds after it was made and only if made after any
//! removal of the joiner: an old approval never re-admits a removed key.

use std::collections::{BTreeMap, BTreeSet};

use consensus::ValidatorId;
use gossip::{Topic, Verdict};

use super::round::JOIN_TTL;
use super::{Action, Core, Millis};
use crate::keys::hex;
use crate::wire::{SignedApproval, SignedJoin};

/// See the module documentation.
#[derive(Default)]
pub struct Approvals {
    /// Keys this node's operator approves.
    allowed: BTreeSet<[u8; 32]>,
    /// Approvals received (and our own), by joiner, then approver.
    received: BTreeMap<[u8; 32], BTreeMap<[u8; 32], SignedApproval>>,
    /// When our approvals last went out.
    last_sent: Option<Millis>,
}

impl Core {
    fn approve_policy(&self) -> bool {
        self.cfg.genesis.file.membership.policy == "approve"
    }

    /// The operator's allow-list changed.
    pub(super) fn on_approve(&mut self, keys: Vec<[u8; 32]>) {
        let keys: BTreeSet<[u8; 32]> = keys.into_iter().collect();
        for k in keys.difference(&self.approvals.allowed) {
            tracing::info!(key = %hex(k), "operator approves this key's admission");
        }
        self.approvals.allowed = keys;
    }

    /// Whether `a` (its signature aside) may count towards admitting its joiner in a value for
    /// height `h`: by a validator of `h`, made before `h` within the join lifetime, and after
    /// any removal of the joiner.
    fn approval_usable(&self, a: &SignedApproval, h: u64) -> bool {
        let chain = &self.committed.chain;
        let removed = chain.tenure.removed.get(&a.joiner).copied();
        a.round < h
            && a.round + JOIN_TTL >= h
            && removed.is_none_or(|r| a.round > r)
            && chain.set_for(h).contains(&ValidatorId(a.validator))
    }

    /// An approval from the membership topic.
    pub(super) fn on_approval(&mut self, a: SignedApproval) -> Verdict {
        if a.verify(self.cfg.genesis.chain_id.as_str()).is_err() {
            return Verdict::Reject("bad approval");
        }
        let h = self.committed.height() + 1;
        if !self.approve_policy() || !self.local.pending_joins.contains_key(&a.joiner) {
            return Verdict::Ignore("approval for no pending join");
        }
        // Made by a validator at most a few rounds ahead of us; usable now or soon.
        let chain = &self.committed.chain;
        let member = chain.set_for(h).contains(&ValidatorId(a.validator))
            || chain.set_for(h + 1).contains(&ValidatorId(a.validator));
        if !member || a.round > h + super::pool::LOOKAHEAD || a.round + JOIN_TTL < h {
            return Verdict::Ignore("approval not usable");
        }
        let by = self.approvals.received.entry(a.joiner).or_default();
        if by.get(&a.validator).is_some_and(|o| o.round >= a.round) {
            return Verdict::Ignore("approval already held");
        }
        by.insert(a.validator, a);
        Verdict::Accept
    }

    /// Periodic: sign and publish our approvals of pending joins the operator listed; forget
    /// approvals of joins no longer pending.
    pub(super) fn approvals_tick(&mut self, now: Millis, out: &mut Vec<Action>) {
        let pending = &self.local.pending_joins;
        self.approvals
            .received
            .retain(|j, _| pending.contains_key(j));
        let h = self.committed.height() + 1;
        if !self.approve_policy()
            || !self.validators().contains(&self.me)
            || self
                .approvals
                .last_sent
                .is_some_and(|t| now.saturating_sub(t) < super::local::JOIN_RETRY_MS)
        {
            return;
        }
        self.approvals.last_sent = Some(now);
        let listed: Vec<[u8; 32]> = self
            .local
            .pending_joins
            .keys()
            .filter(|j| self.approvals.allowed.contains(*j))
            .copied()
            .collect();
        for joiner in listed {
            let a = SignedApproval::new(
                self.cfg.genesis.chain_id.as_str(),
                &self.cfg.key,
                joiner,
                self.committed.height(),
            );
            if let Ok(bytes) = a.encode(now) {
                out.push(Action::Publish {
                    topic: Topic::Membership,
                    bytes: bytes.into(),
                });
            }
            if a.round < h {
                self.approvals
                    .received
                    .entry(joiner)
                    .or_default()
                    .insert(self.me.0, a);
            }
        }
    }

    /// The approvals a value for height `h` admitting `j` carries: the first quorum (by
    /// approver) of the valid ones held; `None` when fewer than a quorum are held.
    pub(super) fn approvals_for(&self, j: &SignedJoin, h: u64) -> Option<Vec<SignedApproval>> {
        let quorum = self.committed.chain.set_for(h).quorum();
        let valid: Vec<SignedApproval> = self
            .approvals
            .received
            .get(&j.validator)?
            .values()
            // Verified when received (or signed here).
            .filter(|a| self.approval_usable(a, h))
            .take(quorum)
            .cloned()
            .collect();
        (valid.len() >= quorum).then_some(valid)
    }

    /// Whether a value's approvals fit its joins: none unless the policy is `approve`; then
    /// sorted by (joiner, approver) without repeats, each valid and for one of the joins, and a
    /// quorum of the validators of `h` for every join.
    pub(super) fn approvals_ok(
        &self,
        h: u64,
        joins: &[SignedJoin],
        approvals: &[SignedApproval],
    ) -> bool {
        if !self.approve_policy() {
            return approvals.is_empty();
        }
        let sorted = approvals
            .windows(2)
            .all(|w| (w[0].joiner, w[0].validator) < (w[1].joiner, w[1].validator));
        let quorum = self.committed.chain.set_for(h).quorum();
        sorted
            && approvals.iter().all(|a| {
                joins.iter().any(|j| j.validator == a.joiner)
                    && self.approval_usable(a, h)
                    && a.verify(self.cfg.genesis.chain_id.as_str()).is_ok()
            })
            && joins
                .iter()
                .all(|j| approvals.iter().filter(|a| a.joiner == j.validator).count() >= quorum)
    }
}
