//! The last committed rounds as the node saw them, for `GET /history` and the dashboard:
//! when each committed, its losses and accuracy where this node measured them, and whose deltas
//! it included. Bounded: the oldest round leaves when round [`History::LIMIT`] + 1 arrives.

use std::collections::VecDeque;

use serde::Serialize;

use crate::keys::hex;
use crate::wire::{LedgerEntry, RoundValue};

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
    /// The authors (validator keys, hex) whose deltas the round included.
    pub included: Vec<String>,
}

/// The last up to [`History::LIMIT`] committed rounds, oldest first.
#[derive(Debug, Clone, Default, Serialize)]
pub struct History {
    /// The rounds.
    rounds: VecDeque<RoundSummary>,
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
                included: rv.included.iter().map(|i| hex(&i.author)).collect(),
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
}
