//! The invariants a run must keep, checked after every step of every node.

use std::collections::BTreeMap;

use gossip::{PeerAction, PeerId, Verdict};

use super::Outcome;
use super::node::SimStore;
use crate::protocol::Core;
use crate::protocol::committed::{MAX_CONTRIBUTORS, RECENT};
use crate::protocol::height::BUFFER_PER_SIGNER;
use crate::protocol::pool::LOOKAHEAD;
use crate::wire::RoundValue;

/// See the module documentation.
pub struct Checker {
    honest: Vec<bool>,
    peers: Vec<PeerId>,
    /// The value id committed at each height (the first honest commit).
    decided: BTreeMap<u64, [u8; 32]>,
    /// Ledger entries of each node already checked.
    checked: Vec<usize>,
    /// Violations found.
    pub violations: Vec<String>,
    liveness: Option<String>,
    max_rounds_held: usize,
    max_snapshot_bytes: usize,
    /// Join requests from fresh keys flooded.
    flooded: usize,
    /// Keys of the nodes that are not honest.
    faulty: Vec<[u8; 32]>,
    /// Deltas of faulty nodes included in committed values.
    poisoned_included: u64,
}

impl Checker {
    /// For nodes with these honesty flags and peer ids.
    pub fn new(honest: Vec<bool>, peers: Vec<PeerId>, keys: Vec<[u8; 32]>) -> Checker {
        let faulty = keys
            .iter()
            .zip(&honest)
            .filter(|(_, h)| !**h)
            .map(|(k, _)| *k)
            .collect();
        Checker {
            faulty,
            poisoned_included: 0,
            checked: vec![0; honest.len()],
            honest,
            peers,
            decided: BTreeMap::new(),
            violations: Vec::new(),
            liveness: None,
            max_rounds_held: 0,
            max_snapshot_bytes: 0,
            flooded: 0,
        }
    }

    /// Records a safety violation.
    pub fn violation(&mut self, what: String) {
        self.violations.push(what);
    }

    /// Records a liveness failure.
    pub fn liveness(&mut self, what: String) {
        self.liveness.get_or_insert(what);
    }

    fn honest_peer(&self, p: &PeerId) -> Option<usize> {
        self.peers
            .iter()
            .position(|q| q == p)
            .filter(|&j| self.honest[j])
    }

    /// An honest node never rejects an honest peer's message.
    pub fn verdict(&mut self, i: usize, from: PeerId, v: Verdict) {
        if let (true, Verdict::Reject(why), Some(j)) = (self.honest[i], v, self.honest_peer(&from))
        {
            self.violation(format!("honest node {i} rejected honest node {j}: {why}"));
        }
    }

    /// An honest node never penalises an honest peer.
    pub fn penalty(&mut self, i: usize, peer: PeerId, a: PeerAction) {
        if let (true, Some(j)) = (self.honest[i], self.honest_peer(&peer)) {
            self.violation(format!("honest node {i} penalised honest node {j}: {a:?}"));
        }
    }

    /// A node flooded `n` join requests from fresh keys.
    pub fn flooded(&mut self, n: usize) {
        self.flooded += n;
    }

    /// A snapshot of `bytes` was served by an honest node.
    pub fn snapshot_served(&mut self, bytes: usize) {
        self.max_snapshot_bytes = self.max_snapshot_bytes.max(bytes);
    }

    /// After node `i` handled an event: agreement, state vs ledger, memory bounds.
    pub fn after_step(&mut self, i: usize, core: &Core, store: &SimStore, stored: bool) {
        if !self.honest[i] {
            return;
        }
        let n = self.honest.len();
        for e in &store.ledger[self.checked[i]..] {
            let id = consensus::Value(e.value.clone()).id().0;
            if !self.decided.contains_key(&e.height) {
                self.new_value(e.height, &e.value);
            }
            let first = *self.decided.entry(e.height).or_insert(id);
            if first != id {
                self.violations.push(format!(
                    "agreement: node {i} committed another value at round {}",
                    e.height
                ));
            }
        }
        self.checked[i] = store.ledger.len();
        if stored && !core.is_syncing() {
            self.state_matches_ledger(i, store);
        }
        let rounds = core.rounds_held();
        self.max_rounds_held = self.max_rounds_held.max(rounds);
        let bounds = [
            ("rounds of deltas", rounds, LOOKAHEAD as usize + 1),
            (
                "deltas",
                core.held_deltas(),
                2 * (n + MAX_CONTRIBUTORS) * (LOOKAHEAD as usize + 1),
            ),
            (
                "ledger entries",
                core.held_entries(),
                RECENT.max(core.genesis().file.membership.downtime_window as usize) + 64,
            ),
            (
                "buffered messages",
                core.buffered_messages(),
                BUFFER_PER_SIGNER * n,
            ),
        ];
        // A join flood never holds more than MAX_CONTRIBUTORS contributor slots.
        if core.contributor_count() > MAX_CONTRIBUTORS {
            self.violations.push(format!(
                "admission: node {i} has {} contributors",
                core.contributor_count()
            ));
        }
        // Admission never lets newcomers reach a third of the voting set.
        let (new, size) = core.newcomers();
        if new > size.saturating_sub(1) / 3 {
            self.violations.push(format!(
                "admission: node {i} has {new} newcomers in a set of {size}"
            ));
        }
        for (what, got, max) in bounds {
            if got > max {
                self.violations
                    .push(format!("memory: node {i} holds {got} {what} (bound {max})"));
            }
        }
    }

    /// A value committed for the first time: deltas of faulty nodes (Byzantine validators and
    /// contributors) stay fewer than half of its inputs, what the robust rule tolerates.
    fn new_value(&mut self, height: u64, value: &[u8]) {
        let Ok(rv) = RoundValue::decode(value) else {
            return;
        };
        let bad = rv
            .included
            .iter()
            .filter(|i| self.faulty.contains(&i.author))
            .count();
        self.poisoned_included += bad as u64;
        // A void round of secure aggregation may include nothing (no faulty delta either).
        if 2 * bad >= rv.included.len() && bad > 0 {
            self.violation(format!(
                "poisoning: round {height} includes {bad} faulty deltas of {}",
                rv.included.len()
            ));
        }
    }

    fn state_matches_ledger(&mut self, i: usize, store: &SimStore) {
        let (Some(last), Some(state)) = (store.ledger.last(), store.state.as_ref()) else {
            return;
        };
        let Ok(rv) = RoundValue::decode(&last.value) else {
            self.violations
                .push(format!("node {i}: undecodable ledger value"));
            return;
        };
        if state.round != last.height || model::params::hash_params(&state.params) != rv.model_hash
        {
            self.violations.push(format!(
                "node {i}: stored state (round {}) does not match its ledger (round {})",
                state.round, last.height
            ));
        }
    }

    /// The outcome so far.
    pub fn finish(self) -> Outcome {
        Outcome {
            violations: self.violations,
            liveness: self.liveness,
            max_rounds_held: self.max_rounds_held,
            max_snapshot_bytes: self.max_snapshot_bytes,
            flooded: self.flooded,
            poisoned_included: self.poisoned_included,
            ..Outcome::default()
        }
    }
}
