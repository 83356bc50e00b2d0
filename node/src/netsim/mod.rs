//! The whole-network simulator: many node cores (real consensus, real ed25519 signatures, real
//! aggregation and local training of the digits MLP) in one thread, under one seed, over a
//! simulated network (delays, loss, duplication, reordering, partitions that heal) with crashes
//! and restarts from each node's simulated store, late joiners and Byzantine nodes. The
//! simulator owns every source of nondeterminism, so one seed replays one execution exactly.
//!
//! Invariants, checked as the run goes (see [`check`]): no two honest nodes commit different
//! values for a round; an honest node's stored state matches its ledger; memory held per node
//! is bounded by a constant number of rounds; no honest node penalises an honest peer; and,
//! once faults stop with 2f + 1 validators up and connected, every honest node commits again
//! within a bounded simulated time.

pub mod check;
pub mod node;
pub mod scenario;
pub mod secagg;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use anyhow::Result;
use consensus::{ValidatorId, encode_message};
use ed25519_dalek::SigningKey;
use gossip::{MessageId, Topic};
use model::rng::Rng;

use crate::keys::peer_id_of;
use crate::protocol::{Action, Event, Millis};
use check::Checker;
use node::{Fault, SimNode};
pub use scenario::{Scenario, SimConfig};

/// Period of the nodes' ticks.
const TICK_MS: Millis = 200;
/// Gossipsub's duplicate cache time as the node configures it.
const DUPLICATE_CACHE_MS: Millis = 30_000;

/// What the queue delivers.
enum Delivery {
    /// An event for a node's core.
    Event(Event),
    /// The node's periodic tick (reschedules itself).
    Periodic,
    /// A deadline the core asked for.
    Wake,
    /// Start or restart the node from its store.
    Boot,
    /// Crash the node (its core is dropped; the store stays).
    Crash,
    /// Split the network: a group per node.
    Partition(Vec<u8>),
    /// One group again.
    Heal,
}

/// What one run found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Safety violations (agreement, state vs ledger, memory, false penalties).
    pub violations: Vec<String>,
    /// Why liveness failed, if it did.
    pub liveness: Option<String>,
    /// Most rounds any honest node held deltas of at once.
    pub max_rounds_held: usize,
    /// Highest round committed by an honest node.
    pub height: u64,
    /// Largest state snapshot served, in bytes.
    pub max_snapshot_bytes: usize,
    /// How many rounds each honest validator's delta was included in (seen by node 0).
    pub inclusions: Vec<u64>,
    /// Simulated time at the end, ms.
    pub end_ms: Millis,
    /// Who node 0 committed the admission and removal of.
    pub membership: MembershipOutcome,
    /// Deltas of faulty nodes included in committed values.
    pub poisoned_included: u64,
    /// Test accuracy of node 0's committed model at the end (digits test split).
    pub accuracy: f32,
    /// Longest simulated time without a new honest commit, ms (faults included).
    pub longest_stall_ms: Millis,
    /// Simulated time from the end of the faults to the next honest commit, ms (`None`: none).
    pub resumed_after_ms: Option<Millis>,
    /// Join requests from fresh keys flooded during the run.
    pub flooded: usize,
    /// Offenders of the delta equivocation evidence node 0 committed, with the round.
    pub delta_evidence: Vec<([u8; 32], u64)>,
    /// Under secure aggregation: what node 0 committed and what the faults did.
    pub secure: SecureOutcome,
    /// With genesis `lowpass_first_layer`: the share of the energy of node 0's committed
    /// first-layer change (from the initial model) outside the filter's band (0 when every
    /// commit step filtered it, and when nothing changed).
    pub first_layer_outside_band: Option<f64>,
}

/// Membership changes node 0 committed, by key.
#[derive(Debug, Default)]
pub struct MembershipOutcome {
    /// Validators admitted (joins; under `open`, promotions).
    pub admitted: Vec<[u8; 32]>,
    /// Under `open`: contributors admitted.
    pub contributors: Vec<[u8; 32]>,
    /// Removals.
    pub removed: Vec<[u8; 32]>,
}

/// Under secure aggregation, what one run found.
#[derive(Debug, Default)]
pub struct SecureOutcome {
    /// Rounds node 0 committed void (model unchanged).
    pub void_rounds: u64,
    /// Rounds node 0 committed with a silent member's self seed recovered from shares.
    pub recovered_rounds: u64,
    /// Rounds in which a selected node crashed instead of revealing.
    pub reveal_crashes: usize,
    /// Rounds in which a validator split its selection ([`Fault::SplitSelections`]).
    pub split_rounds: usize,
}

/// One simulated network.
pub struct Sim {
    cfg: SimConfig,
    genesis: crate::genesis::Genesis,
    nodes: Vec<SimNode>,
    /// The digits test split (the final model's accuracy).
    test: model::data::Dataset,
    queue: BTreeMap<(Millis, u64), (usize, Delivery, u64)>,
    /// Per node, how many times it crashed: an event in flight across a crash is lost.
    epoch: Vec<u64>,
    /// Secure aggregation's crashes, splits and reveals.
    secagg: secagg::Watch,
    /// Join requests seen on the network (for replaying nodes), at most 64, and the last round
    /// a flooding node flooded at.
    joins: (Vec<Vec<u8>>, u64),
    /// Gossipsub names a message by the hash of its bytes and refuses to publish the same bytes
    /// again within its duplicate-cache time: per node, what it published and when.
    published: Vec<BTreeMap<MessageId, Millis>>,
    seq: u64,
    now: Millis,
    rng: Rng,
    groups: Vec<u8>,
    wake: Vec<Option<Millis>>,
    checker: Checker,
}

impl Sim {
    /// Builds the network of `cfg` (nothing runs yet).
    pub fn new(cfg: SimConfig) -> Result<Sim> {
        let mut rng = Rng::derive(cfg.seed, 0x5113);
        let total = cfg.nodes + cfg.joiners;
        let keys: Vec<SigningKey> = (0..total)
            .map(|_| {
                let mut b = [0u8; 32];
                b.iter_mut().for_each(|x| *x = rng.next_u64() as u8);
                SigningKey::from_bytes(&b)
            })
            .collect();
        let ids: Vec<ValidatorId> = keys[..cfg.nodes]
            .iter()
            .map(|k| ValidatorId(k.verifying_key().to_bytes()))
            .collect();
        let genesis = scenario::genesis(&ids, &cfg)?;
        let split = model::data::load(model::data::DatasetKind::Digits, None)?;
        let parts = model::partition::partition(
            &split.train,
            total,
            model::partition::Partition::Iid,
            cfg.seed,
        );
        let mut nodes = Vec::new();
        for (i, key) in keys.into_iter().enumerate() {
            let id = ValidatorId(key.verifying_key().to_bytes());
            let fault = cfg.faults.get(i).copied().flatten();
            nodes.push(SimNode {
                peer: peer_id_of(&id).ok_or_else(|| anyhow::anyhow!("peer id"))?,
                key,
                data: split.train.subset(&parts[i]),
                fault,
                join: i >= cfg.nodes,
                store: Default::default(),
                core: None,
                // One node trains three times longer (it holds the most data, say).
                train_ms: match cfg.net.joiner_train_ms {
                    Some(ms) if i >= cfg.nodes => ms,
                    _ if i == 1 => 240,
                    _ => 60 + 10 * i as u64,
                },
            });
        }
        let honest: Vec<bool> = nodes.iter().map(|n| n.fault.is_none()).collect();
        Ok(Sim {
            test: split.test,
            checker: Checker::new(
                honest,
                nodes.iter().map(|n| n.peer).collect(),
                nodes.iter().map(|n| n.id().0).collect(),
            ),
            groups: vec![0; total],
            wake: vec![None; total],
            epoch: vec![0; total],
            secagg: Default::default(),
            published: vec![BTreeMap::new(); total],
            joins: (Vec::new(), 0),
            queue: BTreeMap::new(),
            seq: 0,
            now: 0,
            rng,
            nodes,
            genesis,
            cfg,
        })
    }

    fn at(&mut self, t: Millis, node: usize, d: Delivery) {
        self.seq += 1;
        let epoch = self.epoch[node];
        self.queue.insert((t, self.seq), (node, d, epoch));
    }

    fn faulty_phase(&self) -> bool {
        self.now < self.cfg.faults_until
    }

    /// Runs to the end: the liveness target or the time bound.
    pub fn run(mut self) -> Outcome {
        for i in 0..self.nodes.len() {
            let start = self.cfg.start_at(i);
            self.at(start, i, Delivery::Boot);
            self.at(start + 1 + i as u64, i, Delivery::Periodic);
        }
        self.schedule_faults();
        let mut target: Option<u64> = None;
        let (mut stall, mut last_commit) = (0, 0);
        let mut resumed = None;
        let deadline = self.cfg.faults_until + self.cfg.liveness_ms;
        while let Some(((t, _), (i, d, epoch))) = self.queue.pop_first() {
            if matches!(d, Delivery::Event(_)) && epoch != self.epoch[i] {
                continue;
            }
            self.now = t;
            if target.is_none() && t >= self.cfg.faults_until {
                target = Some(self.honest_max_height() + self.cfg.rounds_after);
            }
            if let Some(goal) = target
                && self.honest_min_height() >= goal
            {
                break;
            }
            let node0 = self.nodes[0].core.as_ref().map(|c| c.committed_round());
            if self.cfg.stop_at.is_some() && node0 >= self.cfg.stop_at {
                break;
            }
            if t > deadline {
                let goal = target.unwrap_or(0);
                self.checker.liveness(format!(
                    "honest nodes at rounds {:?} after {} ms, want {goal} (faults stopped at {} ms)",
                    self.honest_heights(),
                    t,
                    self.cfg.faults_until
                ));
                break;
            }
            let before = self.honest_max_height();
            if let Err(e) = self.deliver(i, d) {
                self.checker
                    .violation(format!("node {i} failed at {t} ms: {e:#}"));
                break;
            }
            if !self.checker.violations.is_empty() {
                break;
            }
            if self.honest_max_height() > before {
                stall = stall.max(self.now - last_commit);
                last_commit = self.now;
                if resumed.is_none() && self.now >= self.cfg.faults_until {
                    resumed = Some(self.now - self.cfg.faults_until);
                }
            }
        }
        let height = self.honest_max_height();
        let mut out = self.checker.finish();
        out.height = height;
        out.end_ms = self.now;
        out.longest_stall_ms = stall.max(self.now - last_commit);
        out.resumed_after_ms = resumed;
        out.secure.reveal_crashes = self.secagg.reveal_crashes.len();
        out.secure.split_rounds = self.secagg.splits.len();
        for e in &self.nodes[0].store.ledger {
            if let Ok(rv) = crate::wire::RoundValue::decode(&e.value) {
                if self.cfg.setup.secure_aggregation {
                    let reveals = &rv.aggregation.reveals;
                    let recovered = reveals
                        .iter()
                        .any(|r| r.starts_with(crate::wire::secagg::RecoveredSeed::MAGIC));
                    out.secure.void_rounds += u64::from(reveals.is_empty());
                    out.secure.recovered_rounds += u64::from(recovered);
                }
                let joins = rv.joins.iter().map(|j| j.validator);
                if self.cfg.setup.policy == "open" {
                    out.membership.contributors.extend(joins);
                    out.membership
                        .admitted
                        .extend(rv.promotions.iter().copied());
                } else {
                    out.membership.admitted.extend(joins);
                }
                out.membership.removed.extend(rv.removals.iter().copied());
                out.delta_evidence
                    .extend(rv.delta_evidence.iter().map(|d| (d.author(), e.height)));
            }
        }
        if let Some(c) = self.nodes[0].core.as_ref() {
            out.accuracy =
                model::train::evaluate_params(&self.genesis.model, c.params(), &self.test)
                    .map_or(0.0, |(acc, _)| acc);
            out.first_layer_outside_band = self.genesis.lowpass.as_ref().map(|lp| {
                let init = self.genesis.initial_params();
                let change: Vec<f32> = c.params().iter().zip(&init).map(|(a, b)| a - b).collect();
                lp.outside_share(&change).unwrap_or(1.0)
            });
            out.inclusions = self.nodes[..self.cfg.nodes]
                .iter()
                .filter(|n| n.fault.is_none())
                .map(|n| c.inclusions().get(&n.id().0).copied().unwrap_or(0))
                .collect();
        }
        out
    }

    /// Node `i` sends join requests from `flood_per_round` fresh keys once per committed round.
    fn flood_joins(&mut self, i: usize) {
        let Some(h) = self.nodes[i].core.as_ref().map(|c| c.committed_round()) else {
            return;
        };
        if h <= self.joins.1 && self.joins.1 > 0 {
            return;
        }
        self.joins.1 = h.max(1);
        let chain = self.genesis.chain_id.as_str().to_string();
        for _ in 0..self.cfg.flood_per_round {
            let mut b = [0u8; 32];
            b.iter_mut().for_each(|x| *x = self.rng.next_u64() as u8);
            let key = SigningKey::from_bytes(&b);
            let ttl = crate::protocol::round::JOIN_TTL;
            // The flooder pays the proof of work the genesis asks (free requests are refused).
            let bits = self.genesis.file.membership.join_work_bits;
            let join = crate::wire::SignedJoin::new(&chain, &key, h, h + ttl).solve(bits);
            if let Ok(bytes) = join.encode() {
                self.broadcast_unchecked(i, Topic::Membership, bytes);
            }
        }
        self.checker.flooded(self.cfg.flood_per_round);
    }

    /// The keys of the joining nodes, in order.
    #[cfg(test)]
    pub fn joiner_ids(&self) -> Vec<[u8; 32]> {
        self.nodes[self.cfg.nodes..]
            .iter()
            .map(|n| n.id().0)
            .collect()
    }

    fn honest_heights(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.fault.is_none() && !n.join)
            .filter_map(|n| n.core.as_ref().map(|c| c.committed_round()))
            .collect()
    }

    fn honest_max_height(&self) -> u64 {
        self.honest_heights().into_iter().max().unwrap_or(0)
    }

    fn honest_min_height(&self) -> u64 {
        self.honest_heights().into_iter().min().unwrap_or(0)
    }

    /// Crashes, restarts and partitions during the faulty phase, from the seed.
    fn schedule_faults(&mut self) {
        let n = self.nodes.len();
        let end = self.cfg.faults_until;
        if self.cfg.net.crashes {
            let mut t = 500 + self.rng.below(1_000) as u64;
            while t < end {
                let i = self.rng.below(self.cfg.nodes);
                let down = 300 + self.rng.below(2_500) as u64;
                self.at(t, i, Delivery::Crash);
                self.at((t + down).min(end), i, Delivery::Boot);
                t += down + self.rng.below(2_000) as u64;
            }
        }
        for (i, down, up) in self.cfg.outages.clone() {
            self.at(down, i, Delivery::Crash);
            if let Some(up) = up {
                self.at(up, i, Delivery::Boot);
            }
        }
        if let Some(t) = self.cfg.joiners_silent_at {
            for j in self.cfg.nodes..n {
                self.at(t, j, Delivery::Crash);
            }
        }
        if self.cfg.net.partitions {
            let mut t = 300 + self.rng.below(1_500) as u64;
            while t < end {
                let groups: Vec<u8> = (0..n).map(|_| self.rng.below(2) as u8).collect();
                let len = 200 + self.rng.below(2_500) as u64;
                self.at(t, 0, Delivery::Partition(groups));
                self.at((t + len).min(end), 0, Delivery::Heal);
                t += len + self.rng.below(2_000) as u64;
            }
        }
    }

    fn deliver(&mut self, i: usize, d: Delivery) -> Result<()> {
        match d {
            Delivery::Boot => {
                if self.nodes[i].core.is_none() {
                    let instance = self.rng.next_u64();
                    let g = self.genesis.clone();
                    self.nodes[i].boot(&g, instance)?;
                    self.handle(i, Event::Start)?;
                    // The operator's allow-list (the `approve` policy).
                    let approved: Vec<[u8; 32]> = (self.cfg.approved_by.iter().enumerate())
                        .filter(|(_, by)| i < **by)
                        .map(|(j, _)| self.nodes[self.cfg.nodes + j].id().0)
                        .collect();
                    if i < self.cfg.nodes && !approved.is_empty() {
                        self.handle(i, Event::Approve(approved))?;
                    }
                }
            }
            Delivery::Crash => {
                self.epoch[i] += 1;
                if self.cfg.net.torn_crashes {
                    self.nodes[i].store.tear();
                }
                self.nodes[i].core = None;
                self.wake[i] = None;
            }
            Delivery::Partition(g) => self.groups = g,
            Delivery::Heal => self.groups.iter_mut().for_each(|g| *g = 0),
            Delivery::Periodic => {
                self.at(self.now + TICK_MS, i, Delivery::Periodic);
                if self.nodes[i].fault == Some(Fault::BogusVotes) {
                    self.forge_votes(i);
                }
                if self.nodes[i].fault == Some(Fault::FloodJoins) {
                    self.flood_joins(i);
                }
                if self.nodes[i].fault == Some(Fault::ReplayJoins) {
                    for j in self.joins.0.clone() {
                        // Each replay is new bytes for gossip (a fresh envelope would be, too).
                        self.broadcast_unchecked(i, Topic::Membership, j);
                    }
                }
                self.handle(i, Event::Tick)?;
            }
            Delivery::Wake => {
                if self.wake[i] == Some(self.now) {
                    self.wake[i] = None;
                }
                self.handle(i, Event::Tick)?;
            }
            Delivery::Event(e) => self.handle(i, e)?,
        }
        Ok(())
    }

    /// Runs one event through node `i`'s core (if it is up) and performs the actions.
    fn handle(&mut self, i: usize, e: Event) -> Result<()> {
        let now = self.now;
        let Some(core) = self.nodes[i].core.as_mut() else {
            return Ok(());
        };
        let mut actions = core.handle(now, e)?;
        let crash = self.reveal_crash(i, &mut actions);
        let mut stored = false;
        for a in actions {
            if self.nodes[i].fault.is_none()
                && let Some(v) = self.secagg.honest_action(i, &a)
            {
                self.checker.violation(v);
            }
            self.nodes[i].store.perform(&a);
            stored |= matches!(a, Action::AppendLedger(_) | Action::WriteState(_));
            self.perform(i, a);
        }
        if crash {
            self.deliver(i, Delivery::Crash)?;
            self.at(now + 2_000, i, Delivery::Boot);
            return Ok(());
        }
        if let Some(core) = self.nodes[i].core.as_ref() {
            self.checker
                .after_step(i, core, &self.nodes[i].store, stored);
            if let Some(d) = core.next_deadline()
                && self.wake[i].is_none_or(|w| d < w)
            {
                self.wake[i] = Some(d.max(now));
                self.at(d.max(now), i, Delivery::Wake);
            }
        }
        Ok(())
    }

    /// Under `crash_on_reveal`: when node `i`'s actions publish its own reveal of a round in
    /// which no node crashed so yet, drops the reveal and says to crash the node.
    fn reveal_crash(&mut self, i: usize, actions: &mut Vec<Action>) -> bool {
        use crate::wire::secagg::SecAggMsg;
        if !self.cfg.net.crash_on_reveal || !self.faulty_phase() {
            return false;
        }
        let me = self.nodes[i].id().0;
        // The first publication of this node's reveal for a round (not a re-send).
        let reveal = actions.iter().enumerate().find_map(|(at, a)| match a {
            Action::Publish {
                topic: Topic::Deltas,
                bytes,
            } => match SecAggMsg::decode(bytes) {
                Some(Ok(SecAggMsg::Reveal(r))) if r.body.member == me => Some((at, r.body.round)),
                _ => None,
            },
            _ => None,
        });
        let Some((at, round)) = reveal else {
            return false;
        };
        if !self.secagg.reveals_out.insert((i, round)) || !self.secagg.reveal_crashes.insert(round)
        {
            return false;
        }
        actions.remove(at);
        true
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        self.groups[a] == self.groups[b]
    }

    fn delay(&mut self) -> Millis {
        let (lo, hi) = if self.faulty_phase() {
            self.cfg.net.delay_faulty
        } else {
            self.cfg.net.delay
        };
        lo + self.rng.below((hi - lo + 1) as usize) as u64
    }

    /// Sends gossip from `i` to every linked node, with loss and duplication while faulty.
    fn broadcast(&mut self, i: usize, topic: Topic, bytes: Vec<u8>) {
        if topic == Topic::Membership
            && crate::wire::SignedJoin::decode(&bytes).is_ok()
            && self.joins.0.len() < 64
            && !self.joins.0.contains(&bytes)
        {
            self.joins.0.push(bytes.clone());
        }
        self.broadcast_unchecked(i, topic, bytes);
    }

    /// [`Sim::broadcast`] without recording joins.
    fn broadcast_unchecked(&mut self, i: usize, topic: Topic, bytes: Vec<u8>) {
        let id = MessageId::of(&bytes);
        // Deltas go out as announcements with a fresh nonce (gossip's announce-fetch), so only
        // inline topics meet the duplicate cache.
        if topic != Topic::Deltas {
            let now = self.now;
            let seen = &mut self.published[i];
            seen.retain(|_, t| now.saturating_sub(*t) < DUPLICATE_CACHE_MS);
            if seen.insert(id, now).is_some() {
                return;
            }
        }
        for j in 0..self.nodes.len() {
            if j != i && self.linked(i, j) {
                self.send(i, j, topic, id, &bytes);
            }
        }
    }

    /// Sends gossip from `i` to `j`, with loss and duplication while faulty.
    fn send(&mut self, i: usize, j: usize, topic: Topic, id: MessageId, bytes: &[u8]) {
        let faulty = self.faulty_phase();
        if faulty && self.rng.next_f64() < self.cfg.net.loss {
            return;
        }
        let copies = if faulty && self.rng.next_f64() < self.cfg.net.duplicate {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let t = self.now + self.delay();
            let ev = Event::Gossip {
                topic,
                from: self.nodes[i].peer,
                id,
                data: bytes.to_vec().into(),
            };
            self.at(t, j, Delivery::Event(ev));
        }
    }

    /// Under [`Fault::SplitSelections`]: node `i`'s own selection or acknowledgement of a
    /// round it splits, sent as the victim's version to the victim and the other version to
    /// every other node. False when `bytes` is neither (it goes out as usual).
    fn split(&mut self, i: usize, bytes: &[u8]) -> bool {
        use crate::wire::secagg::{SecAggMsg, SignedSelection};
        let Some(Ok(msg)) = SecAggMsg::decode(bytes) else {
            return false;
        };
        let me = self.nodes[i].id().0;
        let round = match &msg {
            SecAggMsg::Selection(s) if s.body.proposer == me => s.body.round,
            SecAggMsg::Ack(a) if a.body.member == me => a.body.round,
            _ => return false,
        };
        if !self.secagg.splits.contains_key(&round) {
            let SecAggMsg::Selection(s) = &msg else {
                return false;
            };
            let quorum = self.genesis.validators.quorum();
            let victim = s.body.included.iter().find(|x| x.author != me);
            let Some(v) = victim.and_then(|x| self.nodes.iter().position(|n| n.id().0 == x.author))
            else {
                return false;
            };
            // Without the victim the set must still be a quorum, or every node refuses it.
            if s.body.included.len() <= quorum {
                return false;
            }
            let mut body = s.body.clone();
            body.included.retain(|x| x.author != self.nodes[v].id().0);
            let Ok(without) = SignedSelection::new(body, &self.nodes[i].key) else {
                return false;
            };
            let split = secagg::Split {
                victim: v,
                with: s.clone(),
                without,
            };
            self.secagg.splits.insert(round, split);
        }
        let Some(split) = self.secagg.splits.get(&round).cloned() else {
            return false;
        };
        let Some((to_victim, to_rest)) = split.messages(&msg, &self.nodes[i].key) else {
            return false;
        };
        for j in 0..self.nodes.len() {
            if j == i || !self.linked(i, j) {
                continue;
            }
            let m = if j == split.victim {
                &to_victim
            } else {
                &to_rest
            };
            if let Ok(b) = m.encode(self.now) {
                self.send(i, j, Topic::Deltas, MessageId::of(&b), &b);
            }
        }
        true
    }

    fn perform(&mut self, i: usize, a: Action) {
        let fault = self.nodes[i].fault;
        match a {
            Action::Publish { topic, bytes } => {
                if fault == Some(Fault::Silent) {
                    return;
                }
                if fault == Some(Fault::SplitSelections)
                    && topic == Topic::Deltas
                    && self.split(i, &bytes)
                {
                    return;
                }
                let bytes = if topic == Topic::Deltas && fault == Some(Fault::BadDeltas) {
                    self.nodes[i].mangle_delta(bytes.to_vec(), &mut self.rng)
                } else {
                    bytes.to_vec()
                };
                self.broadcast(i, topic, bytes);
            }
            Action::Report { from, verdict, .. } => self.checker.verdict(i, from, verdict),
            Action::Penalize { peer, action } => self.checker.penalty(i, peer, action),
            Action::Fetch { round, digest } => self.fetch(i, round, digest),
            Action::RequestState { from_height } => self.request_state(i, from_height),
            Action::Train { round, params } => self.train(i, round, &params),
            Action::DrawSecrets { round } => {
                // Reproducible (the simulator is seeded), so not secret: `cohort run` uses the OS.
                let mut bytes = [0u8; 64];
                bytes
                    .chunks_mut(8)
                    .for_each(|c| c.copy_from_slice(&self.rng.next_u64().to_le_bytes()));
                let entropy = crate::protocol::secure::Entropy(bytes);
                let ev = Event::Secrets { round, entropy };
                self.at(self.now, i, Delivery::Event(ev));
            }
            Action::Fatal(why) => {
                // A Byzantine node may well trip over its own tricks; an honest one never stops.
                if fault.is_none() {
                    self.checker.violation(format!("node {i} stopped: {why}"));
                }
            }
            Action::Committed(_)
            | Action::AppendEvidence(_)
            | Action::WriteCheckpoint { .. }
            | Action::AppendWal(_)
            | Action::ResetWal
            | Action::AppendLedger(_)
            | Action::WriteState(_)
            | Action::WriteResidual(_)
            | Action::WriteOwnDelta(_)
            | Action::WriteReleases(_) => {}
        }
    }

    fn fetch(&mut self, i: usize, round: u64, digest: [u8; 32]) {
        let holders: Vec<usize> = (0..self.nodes.len())
            .filter(|&j| j != i && self.linked(i, j))
            .filter(|&j| {
                self.nodes[j]
                    .core
                    .as_ref()
                    .is_some_and(|c| c.blob(&digest).is_some())
            })
            .collect();
        let t = self.now + 2 * self.delay();
        let ev = match holders.get(self.rng.below(holders.len().max(1))) {
            Some(&j) => match self.nodes[j].core.as_ref().and_then(|c| c.blob(&digest)) {
                Some(b) => Event::Fetched { round, bytes: b },
                None => Event::FetchFailed { digest },
            },
            None => Event::FetchFailed { digest },
        };
        self.at(t + 100, i, Delivery::Event(ev));
    }

    fn request_state(&mut self, i: usize, from_height: u64) {
        let peers: Vec<usize> = (0..self.nodes.len())
            .filter(|&j| j != i && self.linked(i, j) && self.nodes[j].core.is_some())
            .collect();
        let Some(&j) = peers.get(self.rng.below(peers.len().max(1))) else {
            return;
        };
        let Some(snapshot) = self.nodes[j]
            .core
            .as_ref()
            .and_then(|c| c.snapshot_from(from_height))
        else {
            return;
        };
        let snapshot = if self.nodes[j].fault == Some(Fault::LyingSnapshots) {
            self.nodes[j].lie(snapshot, &mut self.rng)
        } else {
            let bytes = snapshot.certificates.iter().map(Vec::len).sum::<usize>()
                + snapshot.checkpoint.as_ref().map_or(0, |c| c.bytes.len());
            self.checker.snapshot_served(bytes);
            snapshot
        };
        let t = self.now + 2 * self.delay();
        let peer = self.nodes[j].peer;
        self.at(t, i, Delivery::Event(Event::State { peer, snapshot }));
    }

    fn train(&mut self, i: usize, round: u64, params: &[f32]) {
        let node = &self.nodes[i];
        let g = &self.genesis;
        let mut rng = Rng::derive(self.cfg.seed ^ (i as u64) << 32, round);
        // Reproducible (the simulator is seeded), so not secret: `cohort run` uses the OS.
        let mut noise = g.train.dp_sgd.map(|_| {
            model::dpsgd::NoiseSource::reproducible(self.cfg.seed, (i as u64) << 32 | round)
        });
        let out = model::train::train_local_with_noise(
            &g.model,
            params,
            &node.data,
            &g.train,
            &mut rng,
            noise.as_mut(),
            &candle_core::Device::Cpu,
        );
        let Ok(out) = out else {
            self.checker
                .violation(format!("node {i}: local training failed"));
            return;
        };
        let t = self.now + node.train_ms + self.rng.below(20) as u64;
        let ev = Event::Trained {
            round,
            out,
            secs: node.train_ms as f64 / 1e3,
            // Reproducible runs: the noise seed comes from the simulation's seed.
            noise_seed: self.rng.next_u64(),
        };
        self.at(t, i, Delivery::Event(ev));
    }

    /// A vote-forging node signs votes for random values at its current height.
    fn forge_votes(&mut self, i: usize) {
        let Some(h) = self.nodes[i].core.as_ref().map(|c| c.committed_round() + 1) else {
            return;
        };
        let chain = self.genesis.chain_id.clone();
        let msgs = self.nodes[i].bogus_votes(&chain, h, &mut self.rng);
        for m in msgs {
            if let Ok(b) = encode_message(&m) {
                let mut bytes = self.rng.next_u64().to_le_bytes().to_vec();
                bytes.extend(b);
                self.broadcast(i, Topic::Consensus, bytes);
            }
        }
    }
}
