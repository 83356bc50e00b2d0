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
///
/// Held compactly: each round is a fixed-size [`Slot`] of about a hundred bytes whose authors are
/// indices into one table of the keys the window names, so the whole window is about 100 kB,
/// allocated and written once at start. A window of [`RoundSummary`]s (480 bytes a round, each
/// author's 32-byte key inline) was reserved above glibc's mmap threshold and the kernel mapped
/// its pages only as rounds filled it: the node's resident memory rose by about 50 kB per hundred
/// rounds until round 1,000 (BENCHMARKS.md section 8).
#[derive(Debug, Clone)]
pub struct History {
    slots: VecDeque<Slot>,
    keys: KeyTable,
}

/// One committed round as held: [`RoundSummary`] with its authors as [`KeyTable`] indices and
/// its rare events boxed.
#[derive(Debug, Clone, Default)]
struct Slot {
    round: u64,
    time_ms: Option<std::num::NonZeroU64>,
    seconds: Option<f32>,
    train_loss: Option<f32>,
    eval_loss: Option<f32>,
    accuracy: Option<f32>,
    phases: Option<[f32; 5]>,
    included: smallvec::SmallVec<[u32; INLINE_AUTHORS]>,
    events: Option<Box<RoundEvents>>,
}

/// The keys the window's rounds include, each held once with the number of rounds that name
/// it; a key no held round names leaves, and its index is reused. So the table holds at most
/// the distinct authors of [`History::LIMIT`] rounds.
#[derive(Debug, Clone, Default)]
struct KeyTable {
    keys: Vec<([u8; 32], u32)>,
    index: std::collections::HashMap<[u8; 32], u32>,
    free: Vec<u32>,
}

impl KeyTable {
    /// `key`'s index, counting one more round that names it.
    fn intern(&mut self, key: [u8; 32]) -> u32 {
        if let Some(&i) = self.index.get(&key) {
            self.keys[i as usize].1 += 1;
            return i;
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.keys[i as usize] = (key, 1);
                i
            }
            None => {
                self.keys.push((key, 1));
                // Live keys are at most the authors of LIMIT committed values, each bounded by
                // the consensus value's size limit: far below 2^32.
                (self.keys.len() - 1) as u32
            }
        };
        self.index.insert(key, i);
        i
    }

    /// One round fewer names the key at `i`.
    fn release(&mut self, i: u32) {
        let entry = &mut self.keys[i as usize];
        entry.1 -= 1;
        if entry.1 == 0 {
            self.index.remove(&entry.0);
            self.free.push(i);
        }
    }

    fn key(&self, i: u32) -> Key {
        Key(self.keys[i as usize].0)
    }

    #[cfg(test)]
    fn live(&self) -> usize {
        self.index.len()
    }
}

impl Default for History {
    fn default() -> Self {
        let mut slots = VecDeque::with_capacity(Self::LIMIT);
        // Write the window once so that its pages are resident from the start instead of being
        // mapped one by one as rounds fill it.
        slots.resize(Self::LIMIT, Slot::default());
        std::hint::black_box(&mut slots);
        slots.clear();
        History {
            slots,
            keys: KeyTable::default(),
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
        if self.slots.len() == Self::LIMIT
            && let Some(old) = self.slots.pop_front()
        {
            for i in old.included {
                self.keys.release(i);
            }
        }
        let events = (r.events != RoundEvents::default()).then(|| Box::new(r.events));
        let p = r.phases;
        self.slots.push_back(Slot {
            round: r.round,
            time_ms: r.time_ms.and_then(std::num::NonZeroU64::new),
            seconds: r.seconds.map(|s| s as f32),
            train_loss: r.train_loss,
            eval_loss: r.eval_loss,
            accuracy: r.accuracy,
            phases: p
                .map(|p| [p.train, p.gossip, p.consensus, p.aggregate, p.other].map(|v| v as f32)),
            included: r.included.iter().map(|k| self.keys.intern(k.0)).collect(),
            events,
        });
    }

    /// Rounds held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// The round held at `slot`, as served.
    fn summary(&self, slot: &Slot) -> RoundSummary {
        RoundSummary {
            round: slot.round,
            time_ms: slot.time_ms.map(std::num::NonZeroU64::get),
            seconds: slot.seconds.map(f64::from),
            train_loss: slot.train_loss,
            eval_loss: slot.eval_loss,
            accuracy: slot.accuracy,
            included: slot.included.iter().map(|&i| self.keys.key(i)).collect(),
            phases: slot.phases.map(|p| p.map(f64::from).into()),
            events: slot.events.as_deref().cloned().unwrap_or_default(),
        }
    }

    /// The `/history` document: `{"limit": 1000, "rounds": [...]}`, oldest round first.
    pub fn to_json(&self) -> serde_json::Result<String> {
        #[derive(Serialize)]
        struct Doc<'a> {
            limit: usize,
            rounds: Rounds<'a>,
        }
        struct Rounds<'a>(&'a History);
        impl Serialize for Rounds<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                // One round materialised at a time, never the whole window.
                s.collect_seq(self.0.slots.iter().map(|slot| self.0.summary(slot)))
            }
        }
        serde_json::to_string(&Doc {
            limit: Self::LIMIT,
            rounds: Rounds(self),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The window's storage is allocated once: pushing rounds past the limit never reallocates.
    #[test]
    fn the_window_is_allocated_once() {
        let mut h = History::default();
        let at_start = h.slots.capacity();
        assert!(at_start >= History::LIMIT);
        for round in 0..2 * History::LIMIT as u64 {
            h.push(RoundSummary {
                round,
                ..RoundSummary::default()
            });
            assert_eq!(h.slots.capacity(), at_start, "round {round}");
        }
        assert_eq!(h.len(), History::LIMIT);
    }

    /// A round is about a hundred bytes held, so the window stays far below glibc's mmap
    /// threshold (128 KiB, set by the node) and is part of the heap written at start.
    #[test]
    fn a_held_round_is_compact() {
        assert!(
            std::mem::size_of::<Slot>() <= 128,
            "{}",
            std::mem::size_of::<Slot>()
        );
    }

    /// The key table holds only the keys the window's rounds name: a network whose authors
    /// change every round (an open network's churn) keeps at most the window's distinct keys,
    /// and every round is served with its own authors.
    #[test]
    fn keys_leave_with_the_last_round_that_names_them() {
        let mut h = History::default();
        let key = |n: u64| {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&n.to_le_bytes());
            Key(k)
        };
        for round in 0..5 * History::LIMIT as u64 {
            // Two fixed validators and two authors seen in this round only.
            let included = [
                key(u64::MAX),
                key(u64::MAX - 1),
                key(2 * round),
                key(2 * round + 1),
            ];
            h.push(RoundSummary {
                round,
                included: included.into_iter().collect(),
                ..RoundSummary::default()
            });
            assert!(h.keys.live() <= 2 + 2 * History::LIMIT, "round {round}");
            assert!(
                h.keys.keys.len() <= 2 + 2 * History::LIMIT + 2,
                "round {round}"
            );
        }
        assert_eq!(h.keys.live(), 2 + 2 * History::LIMIT);
        let v: serde_json::Value =
            serde_json::from_str(&h.to_json().expect("json")).expect("parse");
        let first = &v["rounds"][0];
        let r = 4 * History::LIMIT as u64;
        assert_eq!(first["round"], r);
        let hexes = |ks: &[Key]| ks.iter().map(|k| hex(&k.0)).collect::<Vec<_>>();
        assert_eq!(
            first["included"],
            serde_json::json!(hexes(&[
                key(u64::MAX),
                key(u64::MAX - 1),
                key(2 * r),
                key(2 * r + 1)
            ]))
        );
    }

    /// What is served is what was pushed (floats to `f32` precision).
    #[test]
    fn a_round_is_served_as_pushed() {
        let mut h = History::default();
        let r = RoundSummary {
            round: 12,
            time_ms: Some(1_700_000_000_123),
            seconds: Some(0.25),
            train_loss: Some(1.5),
            eval_loss: None,
            accuracy: Some(0.875),
            included: smallvec::smallvec![Key([3; 32]), Key([1; 32])],
            phases: Some([0.5, 0.25, 0.125, 0.0625, 0.03125].into()),
            events: RoundEvents {
                promotions: vec![Key([7; 32])],
                evidence: 2,
                ..RoundEvents::default()
            },
        };
        h.push(r.clone());
        h.push(RoundSummary {
            round: 13,
            ..RoundSummary::default()
        });
        assert_eq!(h.summary(&h.slots[0]), r);
        assert_eq!(
            h.summary(&h.slots[1]),
            RoundSummary {
                round: 13,
                ..RoundSummary::default()
            }
        );
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
