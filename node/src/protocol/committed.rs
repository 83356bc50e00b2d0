//! The verified chain and the committed model, with the part of the ledger the node keeps in
//! memory: the last max([`RECENT`], W) entries (lagging peers, proposer skipping, downtime,
//! snapshot tails) and every entry that changed the validator set (what a snapshot must carry). Memory grows with
//! membership changes, never with rounds.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use anyhow::Result;
use consensus::ValidatorId;

use crate::chain::Chain;
use crate::genesis::Genesis;
use crate::store::Recovered;
use crate::wire::{LedgerEntry, RoundValue, StateBody};

/// Recent ledger entries kept in memory (at least; the genesis downtime window if longer).
pub const RECENT: usize = 16;
/// A validator whose delta was included in none of this many committed rounds is skipped as
/// proposer.
pub const ACTIVITY_WINDOW: usize = 8;
/// At most this many contributors' deltas are included in one value.
pub const MAX_CONTRIBUTOR_DELTAS: usize = 4;
/// At most this many contributors at a time (each one for at most its tenure,
/// [`crate::chain::contributor_tenure`]).
pub const MAX_CONTRIBUTORS: usize = 16;
/// A contributor none of whose deltas was included in this many committed rounds (counted from
/// its admission) loses its slot: a key that joined and stays silent, such as one of a join
/// flood, holds a slot for this long, not for its whole tenure. Contributors take turns
/// (`round.rs`), so with room for one contributor delta a round and at most
/// [`MAX_CONTRIBUTORS`] of them, an active one is included at least every 16 rounds.
pub const SILENT_CONTRIBUTOR_ROUNDS: u64 = 2 * MAX_CONTRIBUTORS as u64;

/// A participant's record over the last (at most W) committed rounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reputation {
    /// Its key.
    pub key: [u8; 32],
    /// A validator (else a contributor).
    pub validator: bool,
    /// Rounds whose value included its delta.
    pub included: u64,
    /// Of those, rounds its delta was an outlier against the aggregate.
    pub rejected: u64,
    /// Rounds in the window.
    pub rounds: u64,
}

/// One recent entry with who took part in it.
struct Recent {
    entry: LedgerEntry,
    /// Authors of the included deltas. (Not the certificate's signers: each node assembles its
    /// own certificate from the precommits it received, so signers differ between honest nodes,
    /// and the proposer rotation must be the same on all of them. The simulator found this.)
    participants: BTreeSet<[u8; 32]>,
    /// Authors of included deltas the round marked as outliers.
    rejected: BTreeSet<[u8; 32]>,
}

impl Recent {
    /// Whether `k`'s delta was included and not an outlier.
    fn accepted(&self, k: &[u8; 32]) -> bool {
        self.participants.contains(k) && !self.rejected.contains(k)
    }
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
    /// Entries that changed the validator set (kept for good) or admitted contributors (kept
    /// while those can still be contributors).
    /// (entry, whether it changed the set)
    changes: Vec<(LedgerEntry, bool)>,
    /// Recent entries kept: max(RECENT, downtime window).
    keep: usize,
    /// The downtime window W.
    window: u64,
    /// The `open` policy: joins admit contributors, `promote_after` inclusions promote them.
    contributors_first: bool,
    promote_after: u64,
    /// The genesis rule tolerates Byzantine inputs.
    robust: bool,
}

/// Whether an entry changed the validator set (and must be in every snapshot for good).
fn structural(rv: &RoundValue, contributors_first: bool) -> bool {
    !rv.removals.is_empty()
        || !rv.promotions.is_empty()
        || (!contributors_first && !rv.joins.is_empty())
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
            keep: RECENT
                .max(SILENT_CONTRIBUTOR_ROUNDS as usize)
                .max(genesis.file.membership.downtime_window as usize),
            window: genesis.file.membership.downtime_window,
            contributors_first: genesis.file.membership.contributors_first(),
            promote_after: genesis.file.membership.promote_after,
            robust: genesis.rule.is_robust(),
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
        let set_change = structural(rv, self.contributors_first);
        if !rv.joins.is_empty() || set_change {
            self.changes.push((e.clone(), set_change));
        }
        // Entries that only admitted contributors matter for their tenure.
        let (h, w) = (e.height, crate::chain::contributor_tenure(self.window));
        self.changes
            .retain(|(c, set_change)| *set_change || c.height + w > h);
        let participants = participants(rv);
        self.recent.push_back(Recent {
            entry: e,
            participants,
            rejected: rv.rejected.iter().copied().collect(),
        });
        while self.recent.len() > self.keep {
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
            .map(|(e, _)| e)
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

    /// The last `n` recent entries, newest first, when they are consecutive and end at `h - 1`.
    fn window_before(&self, h: u64, n: usize) -> Option<Vec<&Recent>> {
        let w: Vec<&Recent> = self.recent.iter().rev().take(n).collect();
        let ok = w.len() == n
            && w.first().is_some_and(|r| r.entry.height + 1 == h)
            && w.windows(2)
                .all(|p| p[0].entry.height == p[1].entry.height + 1);
        ok.then_some(w)
    }

    /// The validators a value for height `h` must remove (sorted): members of the set its
    /// changes apply to (that of `h + 1`) that voted through the whole downtime window
    /// (rounds `h - W .. h - 1`) and whose delta was included in fewer than half of them.
    /// Never all of the set. The same on every honest node: it reads committed data only.
    pub fn due_removals(&self, h: u64) -> Vec<[u8; 32]> {
        let w = self.window;
        let Some(window) = self.window_before(h, w as usize) else {
            return Vec::new();
        };
        let next = self.chain.set_for(h + 1);
        let tenure = &self.chain.tenure;
        let due: Vec<[u8; 32]> = next
            .members()
            .iter()
            .filter(|m| tenure.since.get(&m.0).is_some_and(|s| s + w <= h))
            .filter(|m| {
                window
                    .iter()
                    .filter(|r| r.participants.contains(&m.0))
                    .count()
                    * 2
                    < w as usize
            })
            .map(|m| m.0)
            .collect();
        if due.len() >= next.len() {
            return Vec::new();
        }
        due
    }

    /// How many joins a value for height `h` that removes `removals` validators may carry.
    ///
    /// The bound: the newcomers (validators that joined after genesis and have voted for fewer
    /// than W rounds by `h`), these joins included, must stay within f = floor((n - 1) / 3) of
    /// the set after the changes, n = its size. All newcomers going silent at once then leaves
    /// n - f >= quorum older validators (assumed up) to commit; a newcomer stops counting at
    /// exactly the value (`since + W <= h`) that must remove it if it was silent, so silent
    /// newcomers are replaced, never accumulated.
    pub fn admissible_joins(&self, h: u64, removals: usize, max: usize) -> usize {
        let next = self.chain.set_for(h + 1);
        let recent = self.newcomers(next, h);
        let base = next.len().saturating_sub(removals);
        let f = |n: usize| n.saturating_sub(1) / 3;
        (0..=max)
            .take_while(|j| recent + j <= f(base + j))
            .last()
            .unwrap_or(0)
    }

    /// Members of `set` that joined after genesis and have voted for fewer than W rounds by
    /// `h`.
    pub fn newcomers(&self, set: &consensus::ValidatorSet, h: u64) -> usize {
        let since = &self.chain.tenure.since;
        set.members()
            .iter()
            .filter(|m| {
                since
                    .get(&m.0)
                    .is_some_and(|s| *s > 0 && *s + self.window > h)
            })
            .count()
    }

    /// Contributors whose deltas a value for height `h` may include (sorted): within their
    /// tenure, and admitted or included within the last [`SILENT_CONTRIBUTOR_ROUNDS`] rounds.
    pub fn contributors(&self, h: u64) -> Vec<[u8; 32]> {
        let silent = SILENT_CONTRIBUTOR_ROUNDS;
        self.chain
            .tenure
            .contributors
            .iter()
            .filter(|(k, _)| self.chain.is_contributor(k, h))
            .filter(|(k, admitted)| {
                **admitted + silent >= h
                    || self.recent.iter().any(|r| {
                        r.entry.height < h
                            && r.entry.height + silent >= h
                            && r.participants.contains(*k)
                    })
            })
            .map(|(k, _)| *k)
            .collect()
    }

    /// How many contributor deltas a value for height `h` that includes `validators` deltas
    /// of validators may include: the contributors are counted as Byzantine on top of the
    /// f = floor((n - 1) / 3) validators the quorum tolerates, and together they must stay
    /// fewer than half of the value's inputs (2 (f + k) < v + k: what the robust rule, run
    /// with f + k, tolerates), at most [`MAX_CONTRIBUTOR_DELTAS`]. Only under `open` and a
    /// robust rule (a plain mean includes no contributor, so none is ever promoted).
    pub fn contributor_room(&self, h: u64, validators: usize) -> usize {
        if !self.contributors_first || !self.robust {
            return 0;
        }
        let f = self.chain.set_for(h).max_faulty();
        validators
            .saturating_sub(2 * f)
            .saturating_sub(1)
            .min(MAX_CONTRIBUTOR_DELTAS)
    }

    /// The contributors a value for height `h` that removes `removals` must promote (sorted):
    /// those included, and not an outlier, in at least `promote_after` of the last W committed
    /// rounds and in one of
    /// the last [`ACTIVITY_WINDOW`] (a contributor gone silent is not promoted), oldest
    /// admission first, as many as the admission bound allows. The same on every honest node
    /// holding the last W rounds (it reads committed data only).
    pub fn due_promotions(&self, h: u64, removals: &[[u8; 32]]) -> Vec<[u8; 32]> {
        if !self.contributors_first {
            return Vec::new();
        }
        let mut ready: Vec<(u64, [u8; 32])> = self
            .contributors(h)
            .into_iter()
            .filter(|k| !removals.contains(k))
            .filter(|k| {
                let included = self
                    .recent
                    .iter()
                    .filter(|r| {
                        r.entry.height < h && r.entry.height + self.window >= h && r.accepted(k)
                    })
                    .count() as u64;
                // ... and still active: included in one of the last ACTIVITY_WINDOW rounds.
                let active = self.recent.iter().any(|r| {
                    r.entry.height < h
                        && r.entry.height + ACTIVITY_WINDOW as u64 >= h
                        && r.accepted(k)
                });
                included >= self.promote_after && active
            })
            .map(|k| (self.chain.tenure.contributors[&k], k))
            .collect();
        ready.sort();
        let room = self.admissible_joins(h, removals.len(), super::round::MAX_JOINS_PER_ROUND);
        let mut out: Vec<[u8; 32]> = ready.into_iter().take(room).map(|(_, k)| k).collect();
        out.sort();
        out
    }

    /// Reputation of each member of `set` and each contributor, from committed data only: in
    /// how many of the last (at most W) committed rounds its delta was included, in how many
    /// of those it was an outlier, and how many rounds that is.
    pub fn reputation(&self, set: &consensus::ValidatorSet) -> Vec<Reputation> {
        let window: Vec<&Recent> = self
            .recent
            .iter()
            .rev()
            .take(self.window as usize)
            .collect();
        let h = self.chain.height + 1;
        let validators = set.members().iter().map(|m| (m.0, true));
        let contributors = self.contributors(h).into_iter().map(|k| (k, false));
        validators
            .chain(contributors)
            .map(|(key, validator)| Reputation {
                key,
                validator,
                included: window
                    .iter()
                    .filter(|r| r.participants.contains(&key))
                    .count() as u64,
                rejected: window.iter().filter(|r| r.rejected.contains(&key)).count() as u64,
                rounds: window.len() as u64,
            })
            .collect()
    }

    /// How many entries are held in memory.
    pub fn held_entries(&self) -> usize {
        self.recent.len() + self.changes.len()
    }
}
