//! The per-height state machine: `Consensus::apply(Input) -> Vec<Output>`
//! (PROTOCOL.md section 3). Each rule names the line of Algorithm 1 of Buchman, Kwon,
//! Milosevic 2018 (arXiv:1807.04938) it implements.

use std::collections::{BTreeMap, BTreeSet};

use crate::certificate::{Certificate, Evidence};
use crate::codec::{MAX_VALUE_BYTES, Message};
use crate::error::Error;
use crate::keeper::{VoteKeeper, VoteOutcome};
use crate::signing::{Signer, Verifier};
use crate::types::{
    ChainId, Height, Proposal, SignedProposal, SignedVote, ValidatorId, Value, ValueId, View, Vote,
    VoteKind,
};
use crate::validators::ValidatorSet;
use crate::wal::WalEntry;

/// Messages further than this many views ahead of the current view are refused as "not valid
/// yet" (bounds the memory a Byzantine validator can make us spend).
pub const MAX_VIEW_LOOKAHEAD: u32 = 64;

/// Distinct proposals kept per view (the first, and conflicting ones as evidence).
pub const MAX_PROPOSALS_PER_VIEW: usize = 3;

/// A timeout that grows linearly per view: `base_ms + view * per_view_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearTimeout {
    /// Duration in view 0, in milliseconds.
    pub base_ms: u64,
    /// Added per view, in milliseconds.
    pub per_view_ms: u64,
}

/// Timeout durations of every step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Waiting for the proposal (must cover delta fetch and validation). In view 0 its
    /// `base_ms` also covers what the host does once a height (for the node: local training);
    /// later views start from `propose_retry_ms` instead.
    pub propose: LinearTimeout,
    /// The propose timeout's base in views after the first: `propose_retry_ms + view *
    /// propose.per_view_ms`. A view past the first waits only for a proposer that already holds
    /// what it proposes, so a dead proposer in view 1 costs this, not a whole first view.
    pub propose_retry_ms: u64,
    /// Waiting after a quorum of mixed prevotes.
    pub prevote: LinearTimeout,
    /// Waiting after a quorum of mixed precommits.
    pub precommit: LinearTimeout,
    /// Period of re-sending this node's own messages of the current view.
    pub rebroadcast: LinearTimeout,
    /// Cap on every duration, in milliseconds.
    pub max_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            propose: LinearTimeout {
                base_ms: 3000,
                per_view_ms: 1000,
            },
            propose_retry_ms: 3000,
            prevote: LinearTimeout {
                base_ms: 1000,
                per_view_ms: 500,
            },
            precommit: LinearTimeout {
                base_ms: 1000,
                per_view_ms: 500,
            },
            // Fixed, not growing: lost votes must come back before the growing prevote and
            // precommit timeouts give up on a view.
            rebroadcast: LinearTimeout {
                base_ms: 1000,
                per_view_ms: 0,
            },
            max_ms: 60_000,
        }
    }
}

impl Timeouts {
    /// The duration of `step`'s timeout in `view`, in milliseconds.
    pub fn duration_ms(&self, step: TimeoutStep, view: View) -> u64 {
        let linear = match step {
            TimeoutStep::Propose if view.0 > 0 => LinearTimeout {
                base_ms: self.propose_retry_ms,
                ..self.propose
            },
            TimeoutStep::Propose => self.propose,
            TimeoutStep::Prevote => self.prevote,
            TimeoutStep::Precommit => self.precommit,
            TimeoutStep::Rebroadcast => self.rebroadcast,
        };
        linear
            .base_ms
            .saturating_add(linear.per_view_ms.saturating_mul(u64::from(view.0)))
            .min(self.max_ms)
    }
}

/// Configuration shared by all heights.
#[derive(Clone, Debug)]
pub struct Params {
    /// The network's name, bound into every signature.
    pub chain_id: ChainId,
    /// Timeout durations.
    pub timeouts: Timeouts,
    /// Validators left out of the proposer rotation at this height (PROTOCOL.md section 9): the
    /// host derives them from committed history (e.g. validators that signed nothing in the last
    /// rounds), so every honest node passes the same list for a height. An absent proposer then
    /// costs nothing instead of a propose timeout per turn. Empty: plain rotation.
    pub skip_proposers: Vec<ValidatorId>,
}

/// Which timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimeoutStep {
    /// `OnTimeoutPropose` (line 57).
    Propose,
    /// `OnTimeoutPrevote` (line 61).
    Prevote,
    /// `OnTimeoutPrecommit` (line 65).
    Precommit,
    /// Re-send own messages (PROTOCOL.md 3.11).
    Rebroadcast,
}

/// A timer the host runs and reports back with `Input::TimeoutElapsed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timeout {
    /// Height it belongs to.
    pub height: Height,
    /// View it belongs to.
    pub view: View,
    /// Which timer.
    pub step: TimeoutStep,
}

/// The step within a view (the paper's `step_p`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// Waiting for a proposal.
    Propose,
    /// Prevoted, waiting for a polka.
    Prevote,
    /// Precommitted, waiting for a decision or the next view.
    Precommit,
}

/// Everything the host feeds in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Start the height (view 0, or the recovered view after `Consensus::recover`).
    /// Messages may be applied before this; they are stored and acted on once started.
    StartHeight,
    /// A proposal received from the network.
    Proposal(SignedProposal),
    /// A vote received from the network.
    Vote(SignedVote),
    /// A decided value with its certificate (sync from a peer that decided).
    Commit {
        /// The value.
        value: Value,
        /// Its certificate.
        certificate: Certificate,
    },
    /// A timer from `Output::ScheduleTimeout` elapsed.
    TimeoutElapsed(Timeout),
    /// The application's answer to `Output::ValidateValue`.
    ValueVerdict {
        /// The value asked about.
        id: ValueId,
        /// True when the value may be decided.
        valid: bool,
    },
    /// The application's answer to `Output::GetValue`.
    ProposeValue {
        /// The height asked for.
        height: Height,
        /// The view asked for.
        view: View,
        /// The value to propose.
        value: Value,
    },
}

impl Input {
    /// The input for a message received from the network; `None` for evidence, which the
    /// host verifies ([`Evidence::verify`]) and acts on itself.
    pub fn from_message(message: Message) -> Option<Input> {
        match message {
            Message::Proposal(p) => Some(Input::Proposal(p)),
            Message::Vote(v) => Some(Input::Vote(v)),
            Message::Commit { value, certificate } => Some(Input::Commit { value, certificate }),
            Message::Evidence(_) => None,
        }
    }
}

/// Everything the host must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Append durably (fsync) before performing any later output of this `apply` call.
    Persist(WalEntry),
    /// Send to all validators (gossip). Own messages are already applied locally.
    Broadcast(Message),
    /// Start a timer; report with `Input::TimeoutElapsed(timeout)` after `after_ms`.
    ScheduleTimeout {
        /// The timer.
        timeout: Timeout,
        /// Milliseconds from now.
        after_ms: u64,
    },
    /// This node proposes: answer with `Input::ProposeValue` for the same height and view.
    GetValue {
        /// Height.
        height: Height,
        /// View.
        view: View,
    },
    /// Check a proposed value: answer with `Input::ValueVerdict { id, .. }`.
    ValidateValue {
        /// Height.
        height: Height,
        /// View it was proposed in.
        view: View,
        /// Its id.
        id: ValueId,
        /// Its bytes.
        value: Value,
    },
    /// The height decided: append (value, certificate) to the ledger durably, start the next
    /// height, and from then on answer messages of this height from peers that still lag
    /// with `Message::Commit { value, certificate }`.
    Decided {
        /// Height.
        height: Height,
        /// View of the deciding precommits.
        view: View,
        /// The value.
        value: Value,
        /// Its certificate.
        certificate: Certificate,
    },
    /// Proof that a validator equivocated: gossip and penalise.
    Evidence(Evidence),
}

/// One height of agreement. Create with [`Consensus::new`] (or [`Consensus::recover`] after
/// a restart), feed [`Input::StartHeight`], then every input; perform the outputs in order.
pub struct Consensus {
    params: Params,
    height: Height,
    keeper: VoteKeeper,
    signer: Box<dyn Signer>,
    verifier: Box<dyn Verifier>,
    /// This node's id when it is a member of the set (else it only follows).
    me: Option<ValidatorId>,
    started: bool,
    recovered: bool,
    view: View,
    step: Step,
    locked: Option<(View, ValueId)>,
    valid: Option<(View, ValueId)>,
    values: BTreeMap<ValueId, Value>,
    verdicts: BTreeMap<ValueId, bool>,
    pending_validation: BTreeSet<ValueId>,
    proposals: BTreeMap<View, Vec<SignedProposal>>,
    own_proposals: BTreeMap<View, SignedProposal>,
    own_votes: BTreeMap<(View, VoteKind), SignedVote>,
    awaiting_value: Option<View>,
    lock_rule_done: Option<View>,
    prevote_timeout_done: Option<View>,
    precommit_timeout_done: Option<View>,
    decision: Option<(View, Value, Certificate)>,
    skip_locking_rule: bool,
}

impl Consensus {
    /// A fresh instance for `height`, run by the validators in `set`. `signer` is this node's
    /// key (a node whose key is not in `set` follows without signing).
    pub fn new(
        params: Params,
        height: Height,
        set: ValidatorSet,
        signer: Box<dyn Signer>,
        verifier: Box<dyn Verifier>,
    ) -> Self {
        let me = Some(signer.id()).filter(|id| set.contains(id));
        Consensus {
            params,
            height,
            keeper: VoteKeeper::new(height, set),
            signer,
            verifier,
            me,
            started: false,
            recovered: false,
            view: View(0),
            step: Step::Propose,
            locked: None,
            valid: None,
            values: BTreeMap::new(),
            verdicts: BTreeMap::new(),
            pending_validation: BTreeSet::new(),
            proposals: BTreeMap::new(),
            own_proposals: BTreeMap::new(),
            own_votes: BTreeMap::new(),
            awaiting_value: None,
            lock_rule_done: None,
            prevote_timeout_done: None,
            precommit_timeout_done: None,
            decision: None,
            skip_locking_rule: false,
        }
    }

    /// Rebuilds an instance after a restart from the WAL entries of `height` (in the order
    /// they were persisted). The node resumes at the highest view it signed in, with its
    /// lock, and never signs a message conflicting with one in `wal`. Then feed
    /// `Input::StartHeight`.
    pub fn recover(
        params: Params,
        height: Height,
        set: ValidatorSet,
        signer: Box<dyn Signer>,
        verifier: Box<dyn Verifier>,
        wal: impl IntoIterator<Item = WalEntry>,
    ) -> Result<Self, Error> {
        let mut c = Consensus::new(params, height, set, signer, verifier);
        let me = c.signer.id();
        let mut max_view = View(0);
        for entry in wal {
            match entry {
                WalEntry::Proposal(sp) => {
                    let p = &sp.proposal;
                    if p.height != height || p.proposer != me {
                        return Err(Error::InvalidWal {
                            reason: "proposal of another height or signer",
                        });
                    }
                    max_view = max_view.max(p.view);
                    let id = p.value.id();
                    c.verdicts.insert(id, true);
                    c.own_proposals.insert(p.view, sp.clone());
                    c.store_proposal(sp);
                }
                WalEntry::Vote(sv) => {
                    if sv.vote.height != height || sv.vote.validator != me {
                        return Err(Error::InvalidWal {
                            reason: "vote of another height or signer",
                        });
                    }
                    max_view = max_view.max(sv.vote.view);
                    c.own_votes.insert((sv.vote.view, sv.vote.kind), sv);
                    // Own votes are members' votes of this height; a duplicate entry is fine.
                    let _ = c.keeper.add(sv);
                }
                WalEntry::Locked { view, value, polka } => {
                    max_view = max_view.max(view);
                    let id = value.id();
                    // The polka that justified the lock: needed to act on (and to relay with)
                    // a re-proposal of the locked value after the restart (line 28).
                    for vote in polka {
                        let v = &vote.vote;
                        let genuine = v.height == height
                            && v.view == view
                            && v.kind == VoteKind::Prevote
                            && v.value == Some(id)
                            && c.verifier.verify(
                                &v.validator,
                                &v.sign_bytes(&c.params.chain_id),
                                &vote.signature,
                            );
                        if genuine {
                            let _ = c.keeper.add(vote);
                        }
                    }
                    if c.locked.is_none_or(|(lv, _)| view >= lv) {
                        c.locked = Some((view, id));
                        c.valid = Some((view, id));
                    }
                    c.verdicts.insert(id, true);
                    c.values.entry(id).or_insert(value);
                }
            }
        }
        c.view = max_view;
        c.step = if c.own_votes.contains_key(&(max_view, VoteKind::Precommit)) {
            Step::Precommit
        } else if c.own_votes.contains_key(&(max_view, VoteKind::Prevote)) {
            Step::Prevote
        } else {
            Step::Propose
        };
        c.recovered = true;
        Ok(c)
    }

    /// Test and simulation only: disables the locking checks of lines 22-33 (a node prevotes
    /// any valid proposal). Unsafe; exists to show the simulator catches the violation.
    #[cfg(any(test, feature = "sim"))]
    pub fn break_locking_rule_for_testing(&mut self) {
        self.skip_locking_rule = true;
    }

    /// True when this node's key is in the validator set (else it only follows and decides
    /// from others' votes or a `Commit`).
    pub fn is_validator(&self) -> bool {
        self.me.is_some()
    }

    /// The height this instance runs.
    pub fn height(&self) -> Height {
        self.height
    }

    /// The current view.
    pub fn view(&self) -> View {
        self.view
    }

    /// The current step.
    pub fn step(&self) -> Step {
        self.step
    }

    /// The lock (view, value id), if any.
    pub fn locked(&self) -> Option<(View, ValueId)> {
        self.locked
    }

    /// The valid value (view, value id), if any.
    pub fn valid(&self) -> Option<(View, ValueId)> {
        self.valid
    }

    /// The decision (view, value, certificate), once decided.
    pub fn decision(&self) -> Option<&(View, Value, Certificate)> {
        self.decision.as_ref()
    }

    /// A one-line-per-view summary of what this instance holds (debugging aid).
    pub fn debug_summary(&self) -> String {
        let mut s = format!(
            "view {} step {:?} locked {:?} valid {:?}\n",
            self.view, self.step, self.locked, self.valid
        );
        let from = self.view.0.saturating_sub(10);
        for v in from..=self.view.0 {
            let view = View(v);
            let props: Vec<String> = self
                .proposals
                .get(&view)
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let id = p.proposal.value.id();
                            format!(
                                "{:?} vr={:?} verdict={:?}",
                                id,
                                p.proposal.valid_round,
                                self.verdicts.get(&id)
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            s += &format!(
                "  view {v}: proposals {:?} prevotes {} (q {:?}, nil {}) precommits {} own {:?}\n",
                props,
                self.keeper.total(view, VoteKind::Prevote),
                self.keeper.quorum_value(view, VoteKind::Prevote),
                self.keeper.count(view, VoteKind::Prevote, None),
                self.keeper.total(view, VoteKind::Precommit),
                (
                    self.own_votes
                        .get(&(view, VoteKind::Prevote))
                        .map(|v| v.vote.value),
                    self.own_votes
                        .get(&(view, VoteKind::Precommit))
                        .map(|v| v.vote.value)
                ),
            );
        }
        s
    }

    /// The validator set of this height.
    pub fn validator_set(&self) -> &ValidatorSet {
        self.keeper.validator_set()
    }

    /// Applies one input and returns what the host must do, in order. An error means the
    /// input was refused; [`Error::kind`] says whether the sender misbehaved.
    pub fn apply(&mut self, input: Input) -> Result<Vec<Output>, Error> {
        let mut out = Vec::new();
        if self.decision.is_some() {
            return match input {
                Input::Proposal(_) | Input::Vote(_) | Input::Commit { .. } => {
                    Err(Error::AlreadyDecided {
                        height: self.height,
                    })
                }
                _ => Ok(out),
            };
        }
        match input {
            Input::StartHeight => {
                if !self.started {
                    self.started = true;
                    if self.recovered {
                        self.resume(&mut out);
                    } else {
                        self.start_round(View(0), &mut out);
                    }
                }
            }
            Input::Proposal(sp) => self.on_proposal(sp, &mut out)?,
            Input::Vote(sv) => self.on_vote(sv, &mut out)?,
            Input::Commit { value, certificate } => self.on_commit(value, certificate, &mut out)?,
            Input::TimeoutElapsed(t) => self.on_timeout(t, &mut out),
            Input::ValueVerdict { id, valid } => {
                self.pending_validation.remove(&id);
                self.verdicts.entry(id).or_insert(valid);
            }
            Input::ProposeValue {
                height,
                view,
                value,
            } => self.on_propose_value(height, view, value, &mut out)?,
        }
        if self.started {
            self.evaluate(&mut out);
        }
        Ok(out)
    }

    fn check_height(&self, height: Height) -> Result<(), Error> {
        if height > self.height {
            Err(Error::FutureHeight {
                got: height,
                expected: self.height,
            })
        } else if height < self.height {
            Err(Error::PastHeight {
                got: height,
                expected: self.height,
            })
        } else {
            Ok(())
        }
    }

    fn check_view(&self, view: View) -> Result<(), Error> {
        if view.0 > self.view.0.saturating_add(MAX_VIEW_LOOKAHEAD) {
            Err(Error::ViewTooFarAhead {
                got: view,
                current: self.view,
            })
        } else {
            Ok(())
        }
    }

    fn on_proposal(&mut self, sp: SignedProposal, out: &mut Vec<Output>) -> Result<(), Error> {
        let p = &sp.proposal;
        self.check_height(p.height)?;
        self.check_view(p.view)?;
        let expected = self.proposer(p.height, p.view);
        if p.proposer != expected {
            return Err(Error::WrongProposer {
                height: p.height,
                view: p.view,
                expected,
                got: p.proposer,
            });
        }
        if let Some(vr) = p.valid_round
            && vr >= p.view
        {
            return Err(Error::InvalidValidRound {
                view: p.view,
                valid_round: vr,
            });
        }
        if p.value.0.len() > MAX_VALUE_BYTES {
            return Err(Error::ValueTooLarge {
                size: p.value.0.len(),
                limit: MAX_VALUE_BYTES,
            });
        }
        let known = self
            .proposals
            .get(&p.view)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if known.contains(&sp) {
            return Err(Error::Duplicate);
        }
        if known.len() >= MAX_PROPOSALS_PER_VIEW {
            return Err(Error::TooManyProposals { view: p.view });
        }
        if !self.verifier.verify(
            &p.proposer,
            &p.sign_bytes(&self.params.chain_id),
            &sp.signature,
        ) {
            return Err(Error::InvalidSignature {
                validator: p.proposer,
            });
        }
        if let Some(first) = known.first() {
            if first.proposal == sp.proposal {
                // Same proposal, other signature bytes: nothing new.
                return Err(Error::Duplicate);
            }
            out.push(Output::Evidence(Evidence::ConflictingProposals {
                first: Box::new(first.clone()),
                second: Box::new(sp.clone()),
            }));
        }
        let (view, id) = (p.view, p.value.id());
        self.store_proposal(sp);
        self.request_validation(view, id, out);
        Ok(())
    }

    fn store_proposal(&mut self, sp: SignedProposal) {
        let p = &sp.proposal;
        self.keeper.note_sender(p.view, p.proposer);
        self.values
            .entry(p.value.id())
            .or_insert_with(|| p.value.clone());
        self.proposals.entry(p.view).or_default().push(sp);
    }

    fn request_validation(&mut self, view: View, id: ValueId, out: &mut Vec<Output>) {
        if self.verdicts.contains_key(&id) || self.pending_validation.contains(&id) {
            return;
        }
        if let Some(value) = self.values.get(&id) {
            self.pending_validation.insert(id);
            out.push(Output::ValidateValue {
                height: self.height,
                view,
                id,
                value: value.clone(),
            });
        }
    }

    fn on_vote(&mut self, sv: SignedVote, out: &mut Vec<Output>) -> Result<(), Error> {
        let v = &sv.vote;
        self.check_height(v.height)?;
        self.check_view(v.view)?;
        if self.keeper.contains(&sv) {
            return Err(Error::Duplicate);
        }
        if !self.validator_set().contains(&v.validator) {
            return Err(Error::UnknownValidator {
                validator: v.validator,
                height: v.height,
            });
        }
        if !self.verifier.verify(
            &v.validator,
            &v.sign_bytes(&self.params.chain_id),
            &sv.signature,
        ) {
            return Err(Error::InvalidSignature {
                validator: v.validator,
            });
        }
        if let VoteOutcome::Equivocation(evidence) = self.keeper.add(sv)? {
            out.push(Output::Evidence(evidence));
        }
        Ok(())
    }

    fn on_commit(
        &mut self,
        value: Value,
        certificate: Certificate,
        out: &mut Vec<Output>,
    ) -> Result<(), Error> {
        self.check_height(certificate.height)?;
        if value.id() != certificate.value_id {
            return Err(Error::InvalidCertificate {
                reason: "value does not match the certificate",
            });
        }
        if value.0.len() > MAX_VALUE_BYTES {
            return Err(Error::ValueTooLarge {
                size: value.0.len(),
                limit: MAX_VALUE_BYTES,
            });
        }
        certificate.verify(
            self.keeper.validator_set(),
            &self.params.chain_id,
            self.verifier.as_ref(),
        )?;
        self.decide(certificate.view, value, certificate, out);
        Ok(())
    }

    fn on_propose_value(
        &mut self,
        height: Height,
        view: View,
        value: Value,
        out: &mut Vec<Output>,
    ) -> Result<(), Error> {
        if value.0.len() > MAX_VALUE_BYTES {
            return Err(Error::ValueTooLarge {
                size: value.0.len(),
                limit: MAX_VALUE_BYTES,
            });
        }
        // An answer to an older GetValue is stale and dropped.
        if height == self.height
            && self.awaiting_value == Some(view)
            && self.view == view
            && self.step == Step::Propose
            && !self.own_proposals.contains_key(&view)
        {
            self.awaiting_value = None;
            // Line 18-19: proposal <- getValue(); broadcast PROPOSAL(h, round, proposal, -1).
            self.propose(value, None, out);
        }
        Ok(())
    }

    fn on_timeout(&mut self, t: Timeout, out: &mut Vec<Output>) {
        if t.height != self.height || t.view != self.view || !self.started {
            return;
        }
        match t.step {
            TimeoutStep::Propose => {
                // Lines 57-60: OnTimeoutPropose(h_p, round_p) while step = propose:
                // broadcast PREVOTE nil; step <- prevote.
                if self.step == Step::Propose {
                    self.cast_vote(VoteKind::Prevote, None, out);
                    self.step = Step::Prevote;
                }
            }
            TimeoutStep::Prevote => {
                // Lines 61-64: OnTimeoutPrevote(h_p, round_p) while step = prevote:
                // broadcast PRECOMMIT nil; step <- precommit.
                if self.step == Step::Prevote {
                    self.cast_vote(VoteKind::Precommit, None, out);
                    self.step = Step::Precommit;
                }
            }
            TimeoutStep::Precommit => {
                // Lines 65-67: OnTimeoutPrecommit(h_p, round_p): StartRound(round_p + 1).
                self.start_round(self.view.next(), out);
            }
            TimeoutStep::Rebroadcast => {
                // PROTOCOL.md 3.11: re-send own messages of this and the previous view.
                self.rebroadcast(out);
                self.schedule(TimeoutStep::Rebroadcast, out);
            }
        }
    }

    fn rebroadcast(&self, out: &mut Vec<Output>) {
        let from = View(self.view.0.saturating_sub(1));
        for view in [from, self.view] {
            if let Some(sp) = self.own_proposals.get(&view) {
                out.push(Output::Broadcast(Message::Proposal(sp.clone())));
                self.relay_polka(sp, out);
            }
            for kind in [VoteKind::Prevote, VoteKind::Precommit] {
                if let Some(sv) = self.own_votes.get(&(view, kind)) {
                    out.push(Output::Broadcast(Message::Vote(*sv)));
                }
            }
            if from == self.view {
                break;
            }
        }
    }

    fn schedule(&self, step: TimeoutStep, out: &mut Vec<Output>) {
        out.push(Output::ScheduleTimeout {
            timeout: Timeout {
                height: self.height,
                view: self.view,
                step,
            },
            after_ms: self.params.timeouts.duration_ms(step, self.view),
        });
    }

    fn is_proposer(&self) -> bool {
        self.me == Some(self.proposer(self.height, self.view))
    }

    /// The proposer of `(height, view)`: the rotation over the set without `skip_proposers`.
    pub fn proposer(&self, height: Height, view: View) -> ValidatorId {
        self.validator_set()
            .proposer_skipping(height, view, &self.params.skip_proposers)
    }

    /// Lines 11-21: StartRound(round).
    fn start_round(&mut self, view: View, out: &mut Vec<Output>) {
        // Line 12-13: round_p <- round; step_p <- propose.
        self.view = view;
        self.step = Step::Propose;
        self.awaiting_value = None;
        self.schedule(TimeoutStep::Rebroadcast, out);
        // Line 21: schedule OnTimeoutPropose (also at the proposer, PROTOCOL.md 3.1).
        self.schedule(TimeoutStep::Propose, out);
        self.propose_if_proposer(out);
    }

    /// Lines 14-19: the proposer proposes its valid value, or asks for a new one.
    fn propose_if_proposer(&mut self, out: &mut Vec<Output>) {
        if !self.is_proposer() {
            return;
        }
        if let Some(sp) = self.own_proposals.get(&self.view) {
            // Already proposed in this view before a restart: re-send the same proposal.
            out.push(Output::Broadcast(Message::Proposal(sp.clone())));
            self.relay_polka(sp, out);
            return;
        }
        // Line 15-16: if validValue_p != nil then proposal <- validValue_p.
        if let Some((valid_round, id)) = self.valid
            && let Some(value) = self.values.get(&id).cloned()
        {
            self.propose(value, Some(valid_round), out);
            return;
        }
        // Line 18: proposal <- getValue() (asynchronous: answered by Input::ProposeValue).
        self.awaiting_value = Some(self.view);
        out.push(Output::GetValue {
            height: self.height,
            view: self.view,
        });
    }

    /// After `recover`: resume the recovered view and step, re-send what was signed.
    fn resume(&mut self, out: &mut Vec<Output>) {
        self.schedule(TimeoutStep::Rebroadcast, out);
        if self.step == Step::Propose {
            self.schedule(TimeoutStep::Propose, out);
            self.propose_if_proposer(out);
        }
        self.rebroadcast(out);
    }

    /// Line 19: broadcast PROPOSAL(h_p, round_p, proposal, validRound_p), after persisting it.
    fn propose(&mut self, value: Value, valid_round: Option<View>, out: &mut Vec<Output>) {
        let Some(me) = self.me else { return };
        if self.own_proposals.contains_key(&self.view) {
            return;
        }
        let id = value.id();
        let signed = Proposal {
            height: self.height,
            view: self.view,
            value,
            valid_round,
            proposer: me,
        }
        .sign(&self.params.chain_id, self.signer.as_ref());
        out.push(Output::Persist(WalEntry::Proposal(signed.clone())));
        out.push(Output::Broadcast(Message::Proposal(signed.clone())));
        self.relay_polka(&signed, out);
        // Our own value (or our valid value) is valid by construction.
        self.verdicts.insert(id, true);
        self.own_proposals.insert(self.view, signed.clone());
        self.store_proposal(signed);
    }

    /// A re-proposal (valid_round = vr) is only acted on by nodes that hold the quorum of
    /// prevotes for it in view vr (line 28). Gossip may have lost them long ago, so the
    /// proposer relays that quorum (the signed prevotes of others) with its proposal.
    fn relay_polka(&self, sp: &SignedProposal, out: &mut Vec<Output>) {
        if let Some(vr) = sp.proposal.valid_round {
            let id = sp.proposal.value.id();
            for vote in self.keeper.votes_for(vr, VoteKind::Prevote, Some(id)) {
                out.push(Output::Broadcast(Message::Vote(vote)));
            }
        }
    }

    /// Signs, persists and broadcasts a vote of the current view, at most one per
    /// (view, kind): an existing different vote is never contradicted.
    fn cast_vote(&mut self, kind: VoteKind, value: Option<ValueId>, out: &mut Vec<Output>) {
        let Some(me) = self.me else { return };
        let key = (self.view, kind);
        if let Some(existing) = self.own_votes.get(&key) {
            if existing.vote.value == value {
                out.push(Output::Broadcast(Message::Vote(*existing)));
            }
            return;
        }
        let signed = Vote {
            height: self.height,
            view: self.view,
            kind,
            value,
            validator: me,
        }
        .sign(&self.params.chain_id, self.signer.as_ref());
        self.own_votes.insert(key, signed);
        out.push(Output::Persist(WalEntry::Vote(signed)));
        out.push(Output::Broadcast(Message::Vote(signed)));
        // Our own vote of our own height: counted like any other.
        let _ = self.keeper.add(signed);
    }

    fn decide(
        &mut self,
        view: View,
        value: Value,
        certificate: Certificate,
        out: &mut Vec<Output>,
    ) {
        if self.decision.is_some() {
            return;
        }
        self.decision = Some((view, value.clone(), certificate.clone()));
        out.push(Output::Decided {
            height: self.height,
            view,
            value,
            certificate,
        });
    }

    /// Fires every rule whose condition holds until none does (the "upon" clauses).
    fn evaluate(&mut self, out: &mut Vec<Output>) {
        while self.decision.is_none() {
            let fired = self.rule_decide(out)
                || self.rule_skip_view(out)
                || self.rule_prevote_on_proposal(out)
                || self.rule_lock(out)
                || self.rule_nil_polka(out)
                || self.rule_out_of_reach(out)
                || self.rule_schedule_prevote_timeout(out)
                || self.rule_schedule_precommit_timeout(out);
            if !fired {
                break;
            }
        }
    }

    /// Lines 49-54: upon PROPOSAL(h_p, r, v, *) and 2f+1 PRECOMMIT(h_p, r, id(v)) while
    /// decision_p[h_p] = nil: if valid(v) then decision_p[h_p] = v.
    fn rule_decide(&mut self, out: &mut Vec<Output>) -> bool {
        for (view, id) in self.keeper.decided_candidates() {
            let Some(value) = self.values.get(&id).cloned() else {
                continue;
            };
            match self.verdicts.get(&id) {
                Some(true) => {
                    let certificate = self.keeper.certificate(view, id);
                    self.decide(view, value, certificate, out);
                    return true;
                }
                Some(false) => {}
                None => self.request_validation(view, id, out),
            }
        }
        false
    }

    /// Lines 55-56: upon f+1 messages (h_p, round, *, *) with round > round_p:
    /// StartRound(round).
    fn rule_skip_view(&mut self, out: &mut Vec<Output>) -> bool {
        match self.keeper.skip_view(self.view) {
            Some(view) => {
                self.start_round(view, out);
                true
            }
            None => false,
        }
    }

    /// Lines 22-27 (fresh proposal) and 28-33 (re-proposal with a polka at vr), while
    /// step = propose.
    fn rule_prevote_on_proposal(&mut self, out: &mut Vec<Output>) -> bool {
        if self.step != Step::Propose {
            return false;
        }
        let Some(candidates) = self.proposals.get(&self.view) else {
            return false;
        };
        let mut choice = None;
        for sp in candidates {
            let p = &sp.proposal;
            let id = p.value.id();
            let Some(&valid) = self.verdicts.get(&id) else {
                continue;
            };
            match p.valid_round {
                None => {
                    // Line 22-23: upon PROPOSAL(h_p, round_p, v, -1) while step = propose:
                    // if valid(v) and (lockedRound = -1 or lockedValue = v).
                    let unlocked = self.locked.is_none_or(|(_, locked)| locked == id);
                    let vote = valid && (unlocked || self.skip_locking_rule);
                    choice = Some(vote.then_some(id));
                    break;
                }
                Some(vr) => {
                    // Line 28-29: upon PROPOSAL(h_p, round_p, v, vr) and 2f+1
                    // PREVOTE(h_p, vr, id(v)) while step = propose and 0 <= vr < round_p:
                    // if valid(v) and (lockedRound <= vr or lockedValue = v).
                    if self.keeper.quorum_value(vr, VoteKind::Prevote) != Some(id) {
                        continue;
                    }
                    let unlocked = self
                        .locked
                        .is_none_or(|(locked_view, locked)| locked_view <= vr || locked == id);
                    let vote = valid && (unlocked || self.skip_locking_rule);
                    choice = Some(vote.then_some(id));
                    break;
                }
            }
        }
        let Some(value) = choice else {
            return false;
        };
        // Lines 24/26 and 30/32: broadcast PREVOTE id(v) or nil; line 27/33: step <- prevote.
        self.cast_vote(VoteKind::Prevote, value, out);
        self.step = Step::Prevote;
        true
    }

    /// Lines 36-43: upon PROPOSAL(h_p, round_p, v, *) and 2f+1 PREVOTE(h_p, round_p, id(v))
    /// while valid(v) and step >= prevote for the first time: lock (if step = prevote),
    /// precommit, and set the valid value.
    fn rule_lock(&mut self, out: &mut Vec<Output>) -> bool {
        if self.step == Step::Propose || self.lock_rule_done == Some(self.view) {
            return false;
        }
        let Some(id) = self.keeper.quorum_value(self.view, VoteKind::Prevote) else {
            return false;
        };
        let has_proposal = self
            .proposals
            .get(&self.view)
            .is_some_and(|ps| ps.iter().any(|sp| sp.proposal.value.id() == id));
        if !has_proposal || self.verdicts.get(&id) != Some(&true) {
            return false;
        }
        self.lock_rule_done = Some(self.view);
        if self.step == Step::Prevote {
            // Lines 38-41: lockedValue <- v; lockedRound <- round_p; broadcast PRECOMMIT
            // id(v); step <- precommit. The lock is persisted before the precommit.
            self.locked = Some((self.view, id));
            if let Some(value) = self.values.get(&id) {
                out.push(Output::Persist(WalEntry::Locked {
                    view: self.view,
                    value: value.clone(),
                    polka: self
                        .keeper
                        .votes_for(self.view, VoteKind::Prevote, Some(id)),
                }));
            }
            self.cast_vote(VoteKind::Precommit, Some(id), out);
            self.step = Step::Precommit;
        }
        // Lines 42-43: validValue <- v; validRound <- round_p.
        self.valid = Some((self.view, id));
        true
    }

    /// Lines 44-46: upon 2f+1 PREVOTE(h_p, round_p, nil) while step = prevote: broadcast
    /// PRECOMMIT nil; step <- precommit.
    fn rule_nil_polka(&mut self, out: &mut Vec<Output>) -> bool {
        if self.step != Step::Prevote || !self.keeper.nil_quorum(self.view, VoteKind::Prevote) {
            return false;
        }
        self.cast_vote(VoteKind::Precommit, None, out);
        self.step = Step::Precommit;
        true
    }

    /// PROTOCOL.md 3.12 (not in the paper): a step whose votes can no longer reach a quorum
    /// for any value is not waited out. While step = propose and no prevote quorum for a
    /// value is possible in this view: prevote nil. While step = prevote and none is
    /// possible: precommit nil. Upon 2f+1 PRECOMMIT(h_p, round_p, *) when no precommit quorum
    /// for a value is possible: StartRound(round_p + 1). Each replaces a timeout whose only
    /// outcome is the same nil vote or view change, so safety is untouched; the first two need
    /// votes the others already cast (at least one honest validator's nil), the last a quorum,
    /// so a minority cut off from the rest does not race through views.
    fn rule_out_of_reach(&mut self, out: &mut Vec<Output>) -> bool {
        let view = self.view;
        if self.step != Step::Precommit
            && self
                .keeper
                .value_quorum_out_of_reach(view, VoteKind::Prevote)
        {
            // Lines 57-60 and 61-64 without their timeouts: nil for the step this node is in.
            let (kind, next) = if self.step == Step::Propose {
                (VoteKind::Prevote, Step::Prevote)
            } else {
                (VoteKind::Precommit, Step::Precommit)
            };
            self.cast_vote(kind, None, out);
            self.step = next;
            return true;
        }
        // Lines 65-67 without their timeout.
        let lost = self.keeper.any_quorum(view, VoteKind::Precommit)
            && self
                .keeper
                .value_quorum_out_of_reach(view, VoteKind::Precommit);
        if lost {
            self.start_round(view.next(), out);
        }
        lost
    }

    /// Lines 34-35: upon 2f+1 PREVOTE(h_p, round_p, *) while step = prevote for the first
    /// time: schedule OnTimeoutPrevote(h_p, round_p).
    fn rule_schedule_prevote_timeout(&mut self, out: &mut Vec<Output>) -> bool {
        if self.step != Step::Prevote
            || self.prevote_timeout_done == Some(self.view)
            || !self.keeper.any_quorum(self.view, VoteKind::Prevote)
        {
            return false;
        }
        self.prevote_timeout_done = Some(self.view);
        self.schedule(TimeoutStep::Prevote, out);
        true
    }

    /// Lines 47-48: upon 2f+1 PRECOMMIT(h_p, round_p, *) for the first time: schedule
    /// OnTimeoutPrecommit(h_p, round_p).
    fn rule_schedule_precommit_timeout(&mut self, out: &mut Vec<Output>) -> bool {
        if self.precommit_timeout_done == Some(self.view)
            || !self.keeper.any_quorum(self.view, VoteKind::Precommit)
        {
            return false;
        }
        self.precommit_timeout_done = Some(self.view);
        self.schedule(TimeoutStep::Precommit, out);
        true
    }
}
