//! The verified chain and the committed model, with the part of the ledger the node keeps in
//! memory: the last [`RECENT`] entries (lagging peers, proposer skipping, snapshot tails) and
//! every entry that changed the validator set (what a snapshot must carry). Memory grows with
//! membership changes, never with rounds.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use anyhow::Result;
use consensus::ValidatorId;

use crate::chain::Chain;
use crate::genesis::Genesis;
use crate::store::Recovered;
use crate::wire::{LedgerEntry, RoundValue, StateBody};

/// Recent ledger entries kept in memory.
pub const RECENT: usize = 16;
/// A validator whose delta was included in none of this many committed rounds is skipped as
/// proposer.
pub const ACTIVITY_WINDOW: usize = 8;

/// One recent entry with who took part in it.
struct Recent {
    entry: LedgerEntry,
    /// Authors of the included deltas. (Not the certificate's signers: each node assembles its
    /// own certificate from the precommits it received, so signers differ between honest nodes,
    /// and the proposer rotation must be the same on all of them. The simulator found this.)
    participants: BTreeSet<[u8; 32]>,
}

/// See the module documentation.
pub struct Committed {
    /// The verified chain (validator sets, last value, model hash).
    pub chain: Chain,
    /// Parameters after the last committed round (genesis parameters while syncing).
    pub params: Arc<Vec<f32>>,
    /// Server momentum after the last committed round.
    pub velocity: Arc<Vec<f32>>,
    recent: VecDeque<Recent>,
    changes: Vec<LedgerEntry>,
}

fn participants(rv: &RoundValue) -> BTreeSet<[u8; 32]> {
    rv.included.iter().map(|i| i.author).collect()
}

impl Committed {
    /// Replays the stored ledger (verifying every certificate) and takes the stored state when
    /// it matches. Returns whether the state must be synced from peers.
    pub fn recover(genesis: &Genesis, recovered: &Recovered) -> Result<(Committed, bool)> {
        let mut c = Committed {
            chain: Chain::new(genesis),
            params: Arc::new(genesis.initial_params()),
            velocity: Arc::new(Vec::new()),
            recent: VecDeque::new(),
            changes: Vec::new(),
        };
        for e in &recovered.ledger {
            let rv = c.chain.follow(e, genesis)?;
            c.remember(e.clone(), &rv);
        }
        let height = c.chain.height;
        let syncing = match &recovered.state {
            Some(s)
                if s.round == height
                    && model::params::hash_params(&s.params) == c.chain.model_hash =>
            {
                c.params = Arc::new(s.params.clone());
                c.velocity = Arc::new(s.velocity.clone());
                false
            }
            Some(s) => {
                tracing::warn!(
                    state_round = s.round,
                    ledger = height,
                    "state does not match the ledger; will sync state from peers"
                );
                true
            }
            None => height > 0,
        };
        Ok((c, syncing))
    }

    /// Last committed round.
    pub fn height(&self) -> u64 {
        self.chain.height
    }

    /// Keeps `e` in memory as a recent entry (and as a change entry when it changed the set).
    pub fn remember(&mut self, e: LedgerEntry, rv: &RoundValue) {
        if !rv.joins.is_empty() {
            self.changes.push(e.clone());
        }
        let participants = participants(rv);
        self.recent.push_back(Recent {
            entry: e,
            participants,
        });
        while self.recent.len() > RECENT {
            self.recent.pop_front();
        }
    }

    /// Records a commit the node verified and applied: the new model, and the entry.
    pub fn advance(
        &mut self,
        e: LedgerEntry,
        rv: &RoundValue,
        params: Arc<Vec<f32>>,
        velocity: Arc<Vec<f32>>,
    ) {
        self.params = params;
        self.velocity = velocity;
        self.remember(e, rv);
    }

    /// The stored form of the committed state.
    pub fn state_body(&self) -> StateBody {
        StateBody {
            round: self.chain.height,
            value_id: self.chain.last_value,
            params: self.params.to_vec(),
            velocity: self.velocity.to_vec(),
        }
    }

    /// The entry of `height`, when still in memory.
    pub fn recent_entry(&self, height: u64) -> Option<&LedgerEntry> {
        self.recent
            .iter()
            .map(|r| &r.entry)
            .find(|e| e.height == height)
    }

    /// What a snapshot after `from` carries: every set-changing entry after `from`, then the
    /// recent entries after `from`, in height order, without repeats.
    pub fn entries_for_snapshot(&self, from: u64) -> Vec<&LedgerEntry> {
        let first_recent = self.recent.front().map_or(u64::MAX, |r| r.entry.height);
        let mut out: Vec<&LedgerEntry> = self
            .changes
            .iter()
            .filter(|e| e.height > from && e.height < first_recent)
            .collect();
        out.extend(
            self.recent
                .iter()
                .map(|r| &r.entry)
                .filter(|e| e.height > from),
        );
        out
    }

    /// Validators of `set` whose delta was included in none of the last [`ACTIVITY_WINDOW`]
    /// committed rounds; empty until that many consecutive rounds are known. The same on every honest node
    /// for a given height (it reads committed history only).
    pub fn inactive(&self, set: &consensus::ValidatorSet) -> Vec<ValidatorId> {
        let window: Vec<&Recent> = self.recent.iter().rev().take(ACTIVITY_WINDOW).collect();
        let consecutive = window.len() == ACTIVITY_WINDOW
            && window
                .windows(2)
                .all(|w| w[0].entry.height == w[1].entry.height + 1);
        if !consecutive {
            return Vec::new();
        }
        set.members()
            .iter()
            .filter(|m| !window.iter().any(|r| r.participants.contains(&m.0)))
            .copied()
            .collect()
    }

    /// How many entries are held in memory.
    pub fn held_entries(&self) -> usize {
        self.recent.len() + self.changes.len()
    }
}
