//! The last committed rounds as the node saw them, for `GET /history` and the dashboard:
//! when each committed, its losses and accuracy where this node measured them, and whose deltas
//! it included. Bounded: the oldest round leaves when round [`History::LIMIT`] + 1 arrives.

use std::collections::VecDeque;

use serde::{Serialize, Serializer};

use crate::keys::hex;
use crate::wire::{LedgerEntry, RoundValue};

/// A participant's key, held as its 32 bytes (a fifth of its hex form on the heap, for every
/// round kept) and written as hex in the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key(pub [u8; 32]);

impl Serialize for Key {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex(&self.0))
    }
}

fn keys(v: &[[u8; 32]]) -> Vec<Key> {
    v.iter().copied().map(Key).collect()
}

/// Authors held inline in a round's summary.
pub const INLINE_AUTHORS: usize = 8;

/// A round's included authors.
pub type Authors = smallvec::SmallVec<[Key; INLINE_AUTHORS]>;

/// One committed round.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RoundSummary {
    /// The round.
    pub round: u64,
    /// When this node committed it, milliseconds since the Unix epoch; `None` for rounds read
    /// back from the ledger at start-up (the ledger does not record time).
    pub time_ms: Option<u64>,
    /// Seconds from the previous commit to this one, where this node timed it.
    pub seconds: Option<f64>,
    /// This node's mean minibatch loss training its delta for this round, if it trained one.
    pub train_loss: Option<f32>,
    /// The committed model's loss on this node's held-out data, if evaluated this round.
    pub eval_loss: Option<f32>,
    /// The committed model's accuracy on this node's held-out data, if evaluated this round.
    pub accuracy: Option<f32>,
    /// The authors (validator keys, hex in the JSON) whose deltas the round included: inline
    /// up to [`INLINE_AUTHORS`], so that a small network's window is one allocation made at
    /// start instead of a small list per round that grew the heap until round 1,000 (heaptrack:
    /// +113 kB between rounds ~100 and ~1,000 with 4 validators, BENCHMARKS.md section 8).
    pub included: Authors,
    /// Where this node's time went in the round, seconds, where this node timed it.
    pub phases: Option<Phases>,
    /// What the round's value changed or recorded beyond the model (empty lists are left out
    /// of the JSON).
    #[serde(flatten)]
    pub events: RoundEvents,
}

/// A round's time by phase, seconds (see `metrics::PHASES`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Phases {
    /// Local training.
    pub train: f64,
    /// Waiting for deltas and the proposal.
    pub gossip: f64,
    /// Votes until the commit.
    pub consensus: f64,
    /// Computing the aggregate.
    pub aggregate: f64,
    /// Between the commit and the next round's start.
    pub other: f64,
}

impl From<[f64; 5]> for Phases {
    fn from(p: [f64; 5]) -> Self {
        Phases {
            train: p[0],
            gossip: p[1],
            consensus: p[2],
            aggregate: p[3],
            other: p[4],
        }
    }
}

/// Membership changes and findings a committed value carries (keys in hex in the JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RoundEvents {
    /// Keys whose join requests the value admitted (as validators, or as contributors under
    /// `open`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub joins: Vec<Key>,
    /// Contributors promoted to validators.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub promotions: Vec<Key>,
    /// Validators removed (downtime or equivocation).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removals: Vec<Key>,
    /// Included deltas that were outliers against the aggregate.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<Key>,
    /// Pieces of equivocation evidence (votes and deltas) the value committed.
    #[serde(skip_serializing_if = "is_zero")]
    pub evidence: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl RoundEvents {
    /// The events of a committed value.
    pub fn of(rv: &RoundValue) -> Self {
        RoundEvents {
            joins: rv.joins.iter().map(|j| Key(j.validator)).collect(),
            promotions: keys(&rv.promotions),
            removals: keys(&rv.removals),
            rejected: keys(&rv.rejected),
            evidence: rv.evidence.len() + rv.delta_evidence.len(),
        }
    }
}

/// The last up to [`History::LIMIT`] committed rounds, oldest first.
#[derive(Debug, Clone, Serialize)]
pub struct History {
    /// The rounds, allocated for [`History::LIMIT`] at once: a deque that grew as rounds came
    /// made the node's memory rise until round 1,000 (BENCHMARKS.md section 8).
    rounds: VecDeque<RoundSummary>,
}

impl Default for History {
    fn default() -> Self {
        History {
            rounds: VecDeque::with_capacity(Self::LIMIT),
        }
    }
}

impl History {
    /// Rounds kept (and served).
    pub const LIMIT: usize = 1000;

    /// The last rounds of a recovered ledger (no times or losses: the ledger has none).
    pub fn from_ledger(ledger: &[LedgerEntry]) -> Self {
        let mut h = History::default();
        let start = ledger.len().saturating_sub(Self::LIMIT);
        for e in &ledger[start..] {
            // The ledger was checked at open; a value that does not decode is left out here.
            let Ok(rv) = RoundValue::decode(&e.value) else {
                continue;
            };
            h.push(RoundSummary {
                round: e.height,
                included: rv.included.iter().map(|i| Key(i.author)).collect(),
                events: RoundEvents::of(&rv),
                ..RoundSummary::default()
            });
        }
        h
    }

    /// Adds a committed round, dropping the oldest beyond [`History::LIMIT`].
    pub fn push(&mut self, r: RoundSummary) {
        if self.rounds.len() == Self::LIMIT {
            self.rounds.pop_front();
        }
        self.rounds.push_back(r);
    }

    /// Rounds held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.rounds.len()
    }

    /// The `/history` document: `{"limit": 1000, "rounds": [...]}`, oldest round first.
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string(&serde_json::json!({
            "limit": Self::LIMIT,
            "rounds": self.rounds,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The window's storage is allocated once: pushing rounds past the limit never reallocates.
    #[test]
    fn the_window_is_allocated_once() {
        let mut h = History::default();
        let at_start = h.rounds.capacity();
        assert!(at_start >= History::LIMIT);
        for round in 0..2 * History::LIMIT as u64 {
            h.push(RoundSummary {
                round,
                ..RoundSummary::default()
            });
            assert_eq!(h.rounds.capacity(), at_start, "round {round}");
        }
        assert_eq!(h.len(), History::LIMIT);
    }

    #[test]
    fn keeps_the_last_limit_rounds_in_order() {
        let mut h = History::default();
        for r in 1..=2500 {
            h.push(RoundSummary {
                round: r,
                ..RoundSummary::default()
            });
        }
        assert_eq!(h.len(), History::LIMIT);
        let v: serde_json::Value =
            serde_json::from_str(&h.to_json().expect("json")).expect("parse");
        let rounds = v["rounds"].as_array().expect("rounds");
        assert_eq!(rounds.len(), History::LIMIT);
        assert_eq!(rounds[0]["round"], 1501);
        assert_eq!(rounds[999]["round"], 2500);
        assert_eq!(v["limit"], 1000);
    }

    #[test]
    fn keys_are_held_as_bytes_and_written_as_hex() {
        let mut h = History::default();
        h.push(RoundSummary {
            round: 7,
            included: smallvec::smallvec![Key([0xab; 32])],
            events: RoundEvents {
                removals: vec![Key([1; 32])],
                ..RoundEvents::default()
            },
            ..RoundSummary::default()
        });
        let v: serde_json::Value =
            serde_json::from_str(&h.to_json().expect("json")).expect("parse");
        let r = &v["rounds"][0];
        assert_eq!(r["included"], serde_json::json!(["ab".repeat(32)]));
        assert_eq!(r["removals"], serde_json::json!(["01".repeat(32)]));
        assert!(r.get("joins").is_none(), "empty lists are left out");
    }
}
