//! Counters, round phase timings, delta arrival times and per-author inclusion: what the node
//! reports, computed from the `now` the host passes in. Arrival times also feed the proposer's
//! collect window (`round.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Millis;
use super::progress::{Finding, ProgressWatch, STALL_ROUNDS};
use crate::metrics::REJECT_REASONS;
use crate::wire::RoundValue;

/// Monotonic counters (the host mirrors them into its metrics).
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Rounds committed (or adopted by state sync).
    pub rounds_committed: u64,
    /// Deltas accepted.
    pub deltas_accepted: u64,
    /// Deltas rejected, by [`REJECT_REASONS`].
    pub deltas_rejected: [u64; REJECT_REASONS.len()],
    /// Deltas ignored (old, future, duplicate).
    pub deltas_ignored: u64,
    /// Equivocations seen (deltas or votes).
    pub equivocations: u64,
    /// State syncs adopted.
    pub state_syncs: u64,
    /// Bytes of this node's own signed deltas.
    pub delta_bytes_out: u64,
}

impl Counters {
    /// Counts a rejection by reason.
    pub fn reject(&mut self, reason: &str) {
        if let Some(i) = REJECT_REASONS.iter().position(|r| *r == reason) {
            self.deltas_rejected[i] += 1;
        }
    }
}

/// A committed round, for metrics, evaluation and `--json`.
#[derive(Debug, Clone)]
pub struct CommitReport {
    /// Round.
    pub round: u64,
    /// Deltas included.
    pub included: usize,
    /// Authors included.
    pub authors: Vec<[u8; 32]>,
    /// The model hash after the round.
    pub model_hash: [u8; 32],
    /// The committed parameters (for evaluation).
    pub params: Arc<Vec<f32>>,
    /// Seconds: whole round (commit to commit), train, gossip, consensus, aggregate, other.
    pub seconds: f64,
    /// Phase seconds in `metrics::PHASES` order.
    pub phases: [f64; 5],
    /// Membership changes and findings the value carried.
    pub events: crate::history::RoundEvents,
}

/// See the module documentation.
#[derive(Default)]
pub struct Telemetry {
    /// Counters.
    pub counters: Counters,
    /// When the current height started.
    started: Millis,
    /// When the previous height started.
    previous_start: Millis,
    /// When the first proposal of this height was seen.
    proposal_seen: Option<Millis>,
    /// When the last commit finished.
    last_commit: Option<Millis>,
    /// Each author's usual delta arrival, ms after the height's start (exponential average).
    arrival: BTreeMap<[u8; 32], Millis>,
    /// Rounds in which each author's delta was included.
    inclusions: BTreeMap<[u8; 32], u64>,
    /// The latest round each author sent a valid delta for.
    heard: BTreeMap<[u8; 32], u64>,
    /// Whether the committed model still moves and is finite.
    progress: ProgressWatch,
}

impl Telemetry {
    /// A height started.
    pub fn height_started(&mut self, now: Millis) {
        self.previous_start = self.started;
        self.started = now;
        self.proposal_seen = None;
    }

    /// When the current height started.
    pub fn started(&self) -> Millis {
        self.started
    }

    /// A proposal was seen.
    pub fn proposal_seen(&mut self, now: Millis) {
        self.proposal_seen.get_or_insert(now);
    }

    /// A delta of the current height arrived from `author`.
    pub fn arrived(&mut self, author: [u8; 32], now: Millis) {
        self.average_arrival(author, now.saturating_sub(self.started));
    }

    /// A delta of the previous height arrived from `author` after that height was decided:
    /// its arrival after that height's start goes into the same average.
    pub fn arrived_late(&mut self, author: [u8; 32], now: Millis) {
        self.average_arrival(author, now.saturating_sub(self.previous_start));
    }

    /// Moves `author`'s usual arrival a quarter of the way to `after` (ms after a height's start).
    fn average_arrival(&mut self, author: [u8; 32], after: Millis) {
        let avg = self.arrival.entry(author).or_insert(after);
        *avg = (*avg * 3 + after) / 4;
    }

    /// A valid delta of `author` for `round` arrived (any round the pool keeps).
    pub fn heard(&mut self, author: [u8; 32], round: u64) {
        let r = self.heard.entry(author).or_default();
        *r = (*r).max(round);
    }

    /// Whether `author` sent a delta for one of the `window` rounds up to `round` (a node the
    /// proposer should wait for); at the start of a chain every validator counts.
    pub fn recently_heard(&self, author: &[u8; 32], round: u64, window: u64) -> bool {
        round <= window || self.heard_within(author, round, window)
    }

    /// Whether `author` sent a valid delta for one of the `window` rounds up to `round`.
    pub fn heard_within(&self, author: &[u8; 32], round: u64, window: u64) -> bool {
        self.heard
            .get(author)
            .is_some_and(|r| r.saturating_add(window) >= round)
    }

    /// `author`'s usual arrival after a height's start, if ever seen.
    pub fn usual_arrival(&self, author: &[u8; 32]) -> Option<Millis> {
        self.arrival.get(author).copied()
    }

    /// How often each author's delta was included.
    pub fn inclusions(&self) -> &BTreeMap<[u8; 32], u64> {
        &self.inclusions
    }

    /// A round was committed at `now`; `train_secs` is the local training time.
    pub fn committed(
        &mut self,
        now: Millis,
        round: u64,
        rv: &RoundValue,
        model_hash: [u8; 32],
        params: Arc<Vec<f32>>,
        train_secs: f64,
    ) -> CommitReport {
        self.counters.rounds_committed += 1;
        for finding in self.progress.committed(round, model_hash, &params) {
            report(finding);
        }
        for i in &rv.included {
            *self.inclusions.entry(i.author).or_default() += 1;
        }
        // Authors that left keep no entry beyond the validator sets they were in.
        if self.inclusions.len() > consensus::MAX_VALIDATORS * 2 {
            self.inclusions.clear();
        }
        if self.arrival.len() > consensus::MAX_VALIDATORS * 2 {
            self.arrival.clear();
        }
        if self.heard.len() > consensus::MAX_VALIDATORS * 2 {
            self.heard.clear();
        }
        let secs = |ms: Millis| ms as f64 / 1e3;
        let total = secs(now.saturating_sub(self.started));
        let train = train_secs.min(total);
        let gossip = self
            .proposal_seen
            .map(|p| (secs(p.saturating_sub(self.started)) - train).max(0.0))
            .unwrap_or(0.0);
        let consensus = (total - train - gossip).max(0.0);
        let cycle = self
            .last_commit
            .map(|t| secs(now.saturating_sub(t)))
            .unwrap_or(total);
        self.last_commit = Some(now);
        let other = (cycle - total).max(0.0);
        CommitReport {
            round,
            included: rv.included.len(),
            authors: rv.included.iter().map(|i| i.author).collect(),
            model_hash,
            params,
            seconds: cycle,
            phases: [train, gossip, consensus, 0.0, other],
            events: crate::history::RoundEvents::of(rv),
        }
    }
}

/// Logs what the progress watch found: the network commits, yet it does not learn.
fn report(finding: Finding) {
    match finding {
        Finding::Stalled { round, rounds } => tracing::warn!(
            round,
            rounds,
            "the committed model has not changed for {rounds} rounds (threshold \
             {STALL_ROUNDS}): the network commits but does not learn; likely causes: a learning \
             rate of zero or too small to change the parameters, every delta rejected or left \
             out of the value, or every server step refused as non-finite (a learning rate too \
             large)"
        ),
        Finding::NonFinite { round, index } => tracing::error!(
            round,
            parameter = index,
            "a parameter of the committed model is not finite (NaN or infinite): the model is \
             lost; check the genesis learning rates and the aggregation rule"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrival_average_follows_recent_rounds() {
        let mut t = Telemetry::default();
        t.height_started(1_000);
        t.arrived([1; 32], 1_400);
        assert_eq!(t.usual_arrival(&[1; 32]), Some(400));
        t.height_started(2_000);
        t.arrived([1; 32], 2_000);
        assert_eq!(t.usual_arrival(&[1; 32]), Some(300));
        assert_eq!(t.usual_arrival(&[2; 32]), None);
    }

    /// A delta that arrives after its height was decided counts from that height's start, so
    /// a node that is always late still gets a usual arrival to be waited for.
    #[test]
    fn late_arrivals_count_from_their_own_heights_start() {
        let mut t = Telemetry::default();
        t.height_started(1_000);
        t.height_started(1_300);
        t.arrived_late([3; 32], 1_350);
        assert_eq!(t.usual_arrival(&[3; 32]), Some(350));
        assert!(!t.heard_within(&[3; 32], 2, 8), "arrival is not hearing");
        t.heard([3; 32], 1);
        assert!(t.heard_within(&[3; 32], 9, 8));
        assert!(!t.heard_within(&[3; 32], 10, 8));
        assert!(
            t.recently_heard(&[4; 32], 8, 8),
            "every key counts at a chain's start"
        );
        assert!(!t.heard_within(&[4; 32], 8, 8));
    }
}
