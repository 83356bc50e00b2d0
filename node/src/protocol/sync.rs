//! State sync: serving snapshots and adopting a peer's.
//!
//! A snapshot carries the committed state, every ledger entry after the requester's height that
//! changed the validator set, and the last max(16, W) entries (W the genesis downtime window). Its
//! size grows with membership changes, never with rounds: a joiner at round 1,000,000 receives
//! what one at round 100 does. The requester verifies each entry against the validator set it
//! knows (jumping over the gaps between them, `Chain::follow`), then checks that the state
//! hashes to the last certified model.
//!
//! A node decides it is behind when f + 1 distinct validators (at least one honest) show, with
//! signed messages, that they work on a later height.

use std::collections::BTreeSet;

use anyhow::{Result, ensure};
use gossip::{Checkpoint, StateSnapshot};

use super::{Action, Core, Millis};
use gossip::Verdict;

use crate::wire::{GenesisHello, LedgerEntry, RoundValue, StateBody};

/// Wait between two state requests.
pub const RETRY_MS: Millis = 1_500;
/// A decided round whose deltas nobody serves within this is taken by state sync instead.
pub const COMMIT_FETCH_MS: Millis = 5_000;
/// An observer that saw no commit for this long asks for state.
pub const OBSERVER_STALE_MS: Millis = 3_000;

/// See the module documentation.
pub struct SyncState {
    /// Waiting for a snapshot (the stored state is behind the ledger, or we fell behind).
    pub syncing: bool,
    /// The stored state is behind our own ledger (a crash inside a commit): we need the state
    /// of our own height, which a peer at that height holds.
    state_behind: bool,
    /// When the last request went out.
    last_try: Option<Millis>,
    /// Validators that showed a later height since our last commit.
    ahead: BTreeSet<[u8; 32]>,
}

impl SyncState {
    /// `syncing` when the stored state does not match the ledger.
    pub fn new(syncing: bool) -> SyncState {
        SyncState {
            syncing,
            state_behind: syncing,
            last_try: None,
            ahead: BTreeSet::new(),
        }
    }

    /// A validator showed (signed) that it works on a later height; `f` is the current bound
    /// on faulty validators. f + 1 of them mean we are behind.
    pub fn lag_signal(&mut self, validator: [u8; 32], f: usize) {
        if self.ahead.len() <= f {
            self.ahead.insert(validator);
        }
        if self.ahead.len() > f {
            self.syncing = true;
        }
    }

    /// Certain that we are behind (a verified commit for our own height).
    pub fn force(&mut self) {
        self.syncing = true;
    }

    /// A commit happened: earlier signals are stale.
    fn reset(&mut self) {
        self.syncing = false;
        self.state_behind = false;
        self.ahead.clear();
    }
}

impl Core {
    /// What this node serves to a peer that holds everything up to `from_height`.
    pub fn snapshot_from(&self, from_height: u64) -> Option<StateSnapshot> {
        if self.sync.syncing || self.committed.height() <= from_height {
            return None;
        }
        let certificates = self
            .committed
            .entries_for_snapshot(from_height)
            .into_iter()
            .filter_map(|e| e.encode().ok())
            .collect();
        let body = self.committed.state_body();
        // The metadata names our genesis: a requester that runs another one learns it here,
        // before it blames us for certificates it cannot verify.
        let meta = self.hello(self.telemetry.started()).encode().ok()?;
        Some(StateSnapshot {
            checkpoint: Some(Checkpoint {
                meta,
                bytes: body.encode().ok()?,
            }),
            certificates,
        })
    }

    /// Sync housekeeping on a tick: a decision whose deltas never came, observers that fell
    /// behind, and the request itself.
    pub(super) fn sync_tick(&mut self, now: Millis, out: &mut Vec<Action>) {
        if self
            .height
            .pending_commit
            .as_ref()
            .is_some_and(|pc| now.saturating_sub(pc.since) > COMMIT_FETCH_MS)
        {
            tracing::warn!(
                round = self.committed.height() + 1,
                "no peer served a decided round's deltas; syncing state"
            );
            self.height.pending_commit = None;
            self.sync.syncing = true;
        }
        let stale = now.saturating_sub(self.telemetry.started()) > OBSERVER_STALE_MS;
        let want = self.sync.syncing || !self.is_validator() && stale;
        if want
            && self
                .sync
                .last_try
                .is_none_or(|t| now.saturating_sub(t) > RETRY_MS)
        {
            self.sync.last_try = Some(now);
            // With our state behind our ledger we hold everything up to the height before:
            // a peer at our height serves nothing newer than the requester holds, and when the
            // network waits for us to reach a quorum, no peer is ahead.
            let held = self.committed.height();
            out.push(Action::RequestState {
                from_height: if self.sync.state_behind {
                    held.saturating_sub(1)
                } else {
                    held
                },
            });
        }
    }

    /// Verifies and adopts a peer's snapshot: its entries after our ledger, then the state,
    /// which must hash to the last certified model. An error means the peer lied.
    pub(super) fn adopt_state(
        &mut self,
        now: Millis,
        s: StateSnapshot,
        out: &mut Vec<Action>,
    ) -> Result<()> {
        let Some(cp) = s.checkpoint else {
            return Ok(());
        };
        let hello = match GenesisHello::decode(&cp.meta) {
            Some(Ok(h)) => h,
            _ => anyhow::bail!("snapshot metadata is not a genesis hello"),
        };
        if self.on_hello(hello, out) != Verdict::Accept {
            // Another genesis: not a lie, just another chain (reported by `on_hello`).
            return Ok(());
        }
        let body = StateBody::decode(&cp.bytes)?;
        if body.round <= self.committed.height() && !self.sync.syncing {
            return Ok(());
        }
        let g = &self.cfg.genesis;
        let mut chain = self.committed.chain.clone();
        let mut adopted: Vec<(LedgerEntry, RoundValue)> = Vec::new();
        for bytes in &s.certificates {
            let e = LedgerEntry::decode(bytes)?;
            if e.height <= chain.height {
                continue;
            }
            let rv = chain.follow(&e, g)?;
            adopted.push((e, rv));
        }
        ensure!(
            body.round == chain.height,
            "checkpoint is for round {}, certificates end at {}",
            body.round,
            chain.height
        );
        ensure!(
            body.params.len() == g.model.num_params(),
            "checkpoint has the wrong parameter count"
        );
        ensure!(
            model::params::hash_params(&body.params) == chain.model_hash,
            "checkpoint does not hash to the certified model"
        );
        ensure!(
            body.value_id == chain.last_value,
            "checkpoint names another value"
        );
        ensure!(
            body.velocity.is_empty() || body.velocity.len() == body.params.len(),
            "checkpoint has a momentum buffer of the wrong size"
        );
        // Nothing new, unless our own state was missing (it was behind our ledger).
        if adopted.is_empty() && !self.sync.syncing {
            return Ok(());
        }
        let last_rv = adopted.last().map(|(_, rv)| rv.clone());
        for (e, rv) in adopted {
            out.push(Action::AppendLedger(e.clone()));
            self.committed.remember(e, &rv);
        }
        self.committed.chain = chain;
        self.committed.params = std::sync::Arc::new(body.params);
        self.committed.velocity = std::sync::Arc::new(body.velocity);
        out.push(Action::WriteState(self.committed.state_body()));
        out.push(Action::ResetWal);
        tracing::info!(round = self.committed.height(), "state synced from a peer");
        self.telemetry.counters.state_syncs += 1;
        self.sync.reset();
        self.local.training_round = None;
        self.height.machine = None;
        self.height.pending_commit = None;
        if let Some(rv) = last_rv {
            self.after_commit(now, &rv, out);
        }
        self.schedule_start();
        Ok(())
    }

    /// A commit of our own: lag signals start over.
    pub(super) fn sync_committed(&mut self) {
        self.sync.reset();
    }
}
