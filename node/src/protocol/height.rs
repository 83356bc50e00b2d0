//! The current height's consensus: the machine, its timers, consensus messages buffered for the
//! next heights, and the application's pending work (a proposal to build, values to validate,
//! a decided value waiting for its deltas).
//!
//! Consensus messages travel in an envelope `nonce (8 bytes LE) || message`: the nonce is new for
//! every broadcast, so a re-broadcast (after a lost quorum, say) is a new gossip message instead
//! of a duplicate that gossip drops. Messages for later heights are buffered only after their
//! signatures verify against that height's validator set, at most [`BUFFER_PER_SIGNER`] per
//! signer.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use anyhow::Result;
use consensus::{
    Consensus, Ed25519KeyCache, Ed25519Signer, Ed25519Verifier, ErrorKind, Height, Input, Message,
    Output, Params, Timeout, ValidatorId, Value, ValueId, Verifier, View, decode_message,
    decode_wal_entry, encode_message, encode_wal_entry,
};
use gossip::{PeerAction, PeerId, Topic, Verdict};

use super::round::Applied;
use super::{Action, Byzantine, Core, Millis};
use crate::keys::{hex, peer_id_of};

/// Buffered future-height messages per signer.
pub const BUFFER_PER_SIGNER: usize = 64;

/// A decided height waiting for its included deltas before it is written and applied.
pub struct PendingCommit {
    /// Height.
    pub height: u64,
    /// The decided value.
    pub value: Value,
    /// Its certificate.
    pub certificate: consensus::Certificate,
    /// When it was decided.
    pub since: Millis,
}

/// See the module documentation.
pub struct HeightState {
    /// The machine (None: silent, syncing, or decided).
    pub machine: Option<Consensus>,
    /// Pending timers, by deadline.
    timers: BTreeSet<(Millis, Timeout)>,
    /// Verified messages of later heights, with their signer.
    future: VecDeque<(u64, ValidatorId, Message)>,
    /// The proposer's pending `GetValue`.
    pub pending_propose: Option<(Height, View)>,
    /// Values waiting for deltas before a verdict.
    pub pending_validate: Vec<(ValueId, Value)>,
    /// Aggregates computed for values of this height.
    pub applied: HashMap<ValueId, Applied>,
    /// A decision waiting for deltas.
    pub pending_commit: Option<PendingCommit>,
    /// WAL records not yet consumed (a later height's, after a crash between commit steps).
    recovered_wal: Vec<Vec<u8>>,
    /// Heights whose commit we re-sent to a lagging peer, and when.
    answered_lagging: BTreeMap<u64, Millis>,
    /// Consensus broadcasts sent (with the instance, the envelope nonce).
    sent: u64,
}

/// The height a WAL entry belongs to (a lock: that of its polka's votes).
fn wal_height(e: &consensus::WalEntry) -> Option<u64> {
    match e {
        consensus::WalEntry::Proposal(p) => Some(p.proposal.height.0),
        consensus::WalEntry::Vote(v) => Some(v.vote.height.0),
        consensus::WalEntry::Locked { polka, .. } => polka.first().map(|v| v.vote.height.0),
    }
}

/// Splits an envelope into its message bytes.
pub fn open_envelope(data: &[u8]) -> Option<&[u8]> {
    data.get(8..)
}

impl HeightState {
    /// Nothing running; `wal` is what the store recovered.
    pub fn new(wal: Vec<Vec<u8>>) -> HeightState {
        HeightState {
            machine: None,
            timers: BTreeSet::new(),
            future: VecDeque::new(),
            pending_propose: None,
            pending_validate: Vec::new(),
            applied: HashMap::new(),
            pending_commit: None,
            recovered_wal: wal,
            answered_lagging: BTreeMap::new(),
            sent: 0,
        }
    }

    /// The earliest timer.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// The machine's view.
    pub fn view(&self) -> u32 {
        self.machine.as_ref().map_or(0, |m| m.view().0)
    }

    /// Buffered future messages.
    pub fn buffered(&self) -> usize {
        self.future.len()
    }

    /// Wraps a consensus message in a fresh envelope.
    fn envelope(&mut self, instance: u64, msg: &Message) -> Option<Vec<u8>> {
        let bytes = encode_message(msg).ok()?;
        self.sent += 1;
        let mut out = instance.wrapping_add(self.sent).to_le_bytes().to_vec();
        out.extend(bytes);
        Some(out)
    }

    /// Takes the recovered WAL records of `h`, keeping later heights' for later.
    fn take_wal(&mut self, h: u64) -> Vec<consensus::WalEntry> {
        let mut now = Vec::new();
        let mut later = Vec::new();
        for b in std::mem::take(&mut self.recovered_wal) {
            // Secure aggregation's acknowledgements share the WAL (`secure::SecureState::restore`).
            if b.starts_with(crate::wire::secagg::SecAggMsg::MAGIC) {
                continue;
            }
            let Ok(e) = decode_wal_entry(&b) else {
                continue;
            };
            match wal_height(&e) {
                Some(eh) if eh > h => later.push(b),
                Some(eh) if eh < h => {}
                _ => now.push(e),
            }
        }
        self.recovered_wal = later;
        now
    }
}

impl Core {
    /// Starts consensus and training for the height after the last commit.
    pub(super) fn start_height(&mut self, now: Millis, out: &mut Vec<Action>) -> Result<()> {
        let h = self.committed.height() + 1;
        let hs = &mut self.height;
        hs.pending_propose = None;
        hs.pending_validate.clear();
        hs.applied.clear();
        hs.timers.clear();
        hs.pending_commit = None;
        self.pool.prune(h);
        self.secure.prune(h);
        self.telemetry.height_started(now);
        if self.cfg.byzantine == Some(Byzantine::Silent) {
            self.height.machine = None;
            return Ok(());
        }
        // A node outside the validator set runs the same machine as a follower: it signs nothing
        // and decides when it sees 2f + 1 precommits.
        let set = self.validators().clone();
        let params = Params {
            chain_id: self.cfg.genesis.chain_id.clone(),
            timeouts: self.cfg.genesis.timeouts,
            skip_proposers: self.committed.inactive(&set),
        };
        let signer = Box::new(Ed25519Signer::new(self.cfg.key.clone()));
        let wal = self.height.take_wal(h);
        let verifier = Box::new(Ed25519KeyCache::new(set.members().iter().copied()));
        let machine = if wal.is_empty() {
            Consensus::new(params, Height(h), set, signer, verifier)
        } else {
            tracing::info!(
                round = h,
                entries = wal.len(),
                "recovering consensus from the WAL"
            );
            Consensus::recover(params, Height(h), set, signer, verifier, wal)
                .map_err(|e| anyhow::anyhow!("recovering consensus WAL: {e}"))?
        };
        self.height.machine = Some(machine);
        self.feed(now, vec![Input::StartHeight], out)?;
        // Replay buffered messages of this height.
        let buffered = std::mem::take(&mut self.height.future);
        let mut replay = Vec::new();
        for (mh, signer, m) in buffered {
            if mh == h {
                replay.extend(Input::from_message(m));
            } else if mh > h {
                self.height.future.push_back((mh, signer, m));
            }
        }
        for i in replay {
            // A buffered message may have become invalid (another proposer); that is no error.
            let _ = self.feed(now, vec![i], out);
        }
        if self.is_participant() {
            self.start_training(now, out);
        }
        Ok(())
    }

    /// Feeds inputs to consensus and performs every output, including follow-up inputs.
    pub(super) fn feed(
        &mut self,
        now: Millis,
        inputs: Vec<Input>,
        out: &mut Vec<Action>,
    ) -> Result<()> {
        let mut queue: VecDeque<Input> = inputs.into();
        while let Some(input) = queue.pop_front() {
            let Some(machine) = self.height.machine.as_mut() else {
                return Ok(());
            };
            let outputs = machine.apply(input).map_err(anyhow::Error::new)?;
            let (follow, decided) = self.perform_outputs(now, outputs, out)?;
            if decided {
                return Ok(());
            }
            queue.extend(follow);
        }
        Ok(())
    }

    /// Performs consensus outputs in order; returns follow-up inputs and whether the height was
    /// decided (the rest of this height's work is then moot).
    fn perform_outputs(
        &mut self,
        now: Millis,
        outputs: Vec<Output>,
        out: &mut Vec<Action>,
    ) -> Result<(Vec<Input>, bool)> {
        let mut follow = Vec::new();
        for o in outputs {
            match o {
                Output::Persist(entry) => {
                    let bytes =
                        encode_wal_entry(&entry).map_err(|e| anyhow::anyhow!("wal encode: {e}"))?;
                    out.push(Action::AppendWal(bytes));
                }
                Output::Broadcast(msg) => {
                    if let Some(bytes) = self.height.envelope(self.cfg.instance, &msg) {
                        out.push(Action::Publish {
                            topic: Topic::Consensus,
                            bytes: bytes.into(),
                        });
                    }
                }
                Output::ScheduleTimeout { timeout, after_ms } => {
                    self.height
                        .timers
                        .insert((now.saturating_add(after_ms), timeout));
                }
                Output::GetValue { height, view } => {
                    self.height.pending_propose = Some((height, view));
                    follow.extend(self.try_propose(now)?);
                }
                Output::ValidateValue { id, value, .. } => {
                    self.telemetry.proposal_seen(now);
                    self.height.pending_validate.push((id, value));
                    follow.extend(self.check_validations(out)?);
                }
                Output::Decided {
                    height,
                    value,
                    certificate,
                    ..
                } => {
                    self.height.machine = None;
                    self.height.pending_commit = Some(PendingCommit {
                        height: height.0,
                        value,
                        certificate,
                        since: now,
                    });
                    self.try_finish_commit(now, out)?;
                    return Ok((Vec::new(), true));
                }
                Output::Evidence(e) => {
                    self.telemetry.counters.equivocations += 1;
                    self.hold_evidence(&e);
                    tracing::warn!(offender = %hex(&e.offender().0), "consensus equivocation evidence");
                    if let Some(peer) = peer_id_of(&e.offender()) {
                        out.push(Action::Penalize {
                            peer,
                            action: PeerAction::Fatal,
                        });
                    }
                    if let Some(bytes) = self
                        .height
                        .envelope(self.cfg.instance, &Message::Evidence(e))
                    {
                        out.push(Action::Publish {
                            topic: Topic::Consensus,
                            bytes: bytes.into(),
                        });
                    }
                }
            }
        }
        Ok((follow, false))
    }

    /// Fires every timer due at `now`.
    pub(super) fn fire_timers(&mut self, now: Millis, out: &mut Vec<Action>) -> Result<()> {
        while let Some(&(at, t)) = self.height.timers.first() {
            if at > now {
                break;
            }
            self.height.timers.pop_first();
            self.feed(now, vec![Input::TimeoutElapsed(t)], out)?;
        }
        Ok(())
    }

    /// A consensus message from the network.
    pub(super) fn on_consensus_bytes(
        &mut self,
        now: Millis,
        data: &[u8],
        from: PeerId,
        out: &mut Vec<Action>,
    ) -> Result<Verdict> {
        let Some(msg) = open_envelope(data).and_then(|b| decode_message(b).ok()) else {
            return Ok(Verdict::Reject("malformed consensus message"));
        };
        if let Message::Evidence(e) = &msg {
            if !self.validators().contains(&e.offender()) {
                // Already removed (or never a member we know of): nothing left to act on.
                return Ok(Verdict::Ignore("evidence against a non-member"));
            }
            let ok = e
                .verify(
                    self.validators(),
                    &self.cfg.genesis.chain_id,
                    &Ed25519Verifier,
                )
                .is_ok();
            if !ok {
                return Ok(Verdict::Reject("bad evidence"));
            }
            self.telemetry.counters.equivocations += 1;
            self.hold_evidence(e);
            if let Some(peer) = peer_id_of(&e.offender()) {
                out.push(Action::Penalize {
                    peer,
                    action: PeerAction::Fatal,
                });
            }
            return Ok(Verdict::Accept);
        }
        let mh = msg.height().0;
        let h = self.committed.height() + 1;
        if mh < h {
            // A lagging peer: help it with the commit of that height (rate-limited).
            self.answer_lagging(now, mh, out);
            return Ok(Verdict::Ignore("past height"));
        }
        if mh > h || self.waiting_to_start() {
            // A later height, or ours while the minimum round time holds us back.
            return Ok(self.buffer_future(mh, msg));
        }
        if self.height.machine.is_none() {
            if matches!(msg, Message::Commit { .. }) && self.verified_signer(mh, &msg).is_some() {
                // A commit for our own height while we do not run it: we are behind.
                self.sync.force();
            }
            return Ok(Verdict::Ignore("not participating"));
        }
        let Some(input) = Input::from_message(msg) else {
            return Ok(Verdict::Ignore("no input"));
        };
        let result = match self.height.machine.as_mut() {
            Some(c) => c.apply(input),
            None => return Ok(Verdict::Ignore("not participating")),
        };
        match result {
            Ok(outputs) => {
                let (follow, decided) = self.perform_outputs(now, outputs, out)?;
                if !decided {
                    self.feed(now, follow, out)?;
                }
                Ok(Verdict::Accept)
            }
            Err(e) => Ok(match e.kind() {
                ErrorKind::Misbehaviour => {
                    tracing::debug!(peer = %from, error = %e, "consensus misbehaviour");
                    out.push(Action::Penalize {
                        peer: from,
                        action: PeerAction::MidTolerance,
                    });
                    Verdict::Reject("consensus misbehaviour")
                }
                ErrorKind::NotValidYet => Verdict::Ignore("not valid yet"),
                ErrorKind::Ignored | ErrorKind::Local => Verdict::Ignore("ignored"),
            }),
        }
    }

    /// The signer of a message for height `mh` when its signature verifies against that
    /// height's validator set (for a commit: its certificate, attributed to the first signer).
    fn verified_signer(&self, mh: u64, msg: &Message) -> Option<ValidatorId> {
        let set = self.committed.chain.set_for(mh);
        let chain = &self.cfg.genesis.chain_id;
        match msg {
            Message::Proposal(p) => {
                let id = p.proposal.proposer;
                (set.contains(&id)
                    && Ed25519Verifier.verify(&id, &p.proposal.sign_bytes(chain), &p.signature))
                .then_some(id)
            }
            Message::Vote(v) => {
                let id = v.vote.validator;
                (set.contains(&id)
                    && Ed25519Verifier.verify(&id, &v.vote.sign_bytes(chain), &v.signature))
                .then_some(id)
            }
            Message::Commit { value, certificate } => {
                let ok = value.id() == certificate.value_id
                    && certificate
                        .verify_for_height(Height(mh), set, chain, &Ed25519Verifier)
                        .is_ok();
                ok.then(|| certificate.precommits.first().map(|s| s.validator))
                    .flatten()
            }
            Message::Evidence(_) => None,
        }
    }

    /// Buffers a verified message of a later height; a verified commit (or a message two heights
    /// ahead) from a validator is a sign that we are behind.
    fn buffer_future(&mut self, mh: u64, msg: Message) -> Verdict {
        let h = self.committed.height() + 1;
        if mh > h + 2 {
            if let Some(signer) = self.verified_signer(mh, &msg) {
                let f = self.validators().max_faulty();
                self.sync.lag_signal(signer.0, f);
            }
            return Verdict::Ignore("far future height");
        }
        let Some(signer) = self.verified_signer(mh, &msg) else {
            return Verdict::Reject("bad signature");
        };
        if matches!(msg, Message::Commit { .. }) && mh > h || mh > h + 1 {
            let f = self.validators().max_faulty();
            self.sync.lag_signal(signer.0, f);
        }
        let mine = self
            .height
            .future
            .iter()
            .filter(|(_, s, _)| *s == signer)
            .count();
        if mine < BUFFER_PER_SIGNER {
            self.height.future.push_back((mh, signer, msg));
        }
        Verdict::Ignore("future height")
    }

    /// Re-sends the commit of `height` for a lagging peer, at most once per 2 s per height.
    fn answer_lagging(&mut self, now: Millis, height: u64, out: &mut Vec<Action>) {
        if self
            .height
            .answered_lagging
            .get(&height)
            .is_some_and(|t| now.saturating_sub(*t) < 2_000)
        {
            return;
        }
        let Some(e) = self.committed.recent_entry(height) else {
            return;
        };
        let Ok(certificate) = consensus::decode_certificate(&e.certificate) else {
            return;
        };
        let msg = Message::Commit {
            value: Value(e.value.clone()),
            certificate,
        };
        let answered = &mut self.height.answered_lagging;
        answered.insert(height, now);
        answered.retain(|_, t| now.saturating_sub(*t) < 30_000);
        if let Some(bytes) = self.height.envelope(self.cfg.instance, &msg) {
            out.push(Action::Publish {
                topic: Topic::Consensus,
                bytes: bytes.into(),
            });
        }
    }
}
