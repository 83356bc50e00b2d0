//! Secure aggregation in the simulator: the selected member that crashes before revealing
//! (`NetFaults::crash_on_reveal`), the validator that splits its selection
//! ([`super::node::Fault::SplitSelections`]), and the invariant that every honest reveal and
//! share of a round names one selection (else one member's delta could be unmasked: its self
//! seed revealed for a set that includes it, its pair seeds for one that excludes it).

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::SigningKey;

use crate::protocol::Action;
use crate::wire::secagg::{AckBody, SecAggMsg, SignedAck, SignedSelection};

/// One round's split: what the victim was shown, and what every other node was.
#[derive(Clone)]
pub struct Split {
    /// The node left out of `without`.
    pub victim: usize,
    /// The splitting proposer's own selection (includes the victim).
    pub with: SignedSelection,
    /// The same set without the victim, signed by the same proposer.
    pub without: SignedSelection,
}

impl Split {
    /// The selection or acknowledgement `msg` of the splitting node as the victim gets it and
    /// as the others do; `None` when `msg` is neither.
    pub fn messages(&self, msg: &SecAggMsg, key: &SigningKey) -> Option<(SecAggMsg, SecAggMsg)> {
        match msg {
            SecAggMsg::Selection(_) => Some((
                SecAggMsg::Selection(self.with.clone()),
                SecAggMsg::Selection(self.without.clone()),
            )),
            SecAggMsg::Ack(a) => {
                let ack = |s: &SignedSelection| {
                    SignedAck::new(
                        AckBody {
                            selection: s.body.digest(),
                            ..a.body.clone()
                        },
                        key,
                    )
                    .ok()
                };
                Some((
                    SecAggMsg::Ack(ack(&self.with)?),
                    SecAggMsg::Ack(ack(&self.without)?),
                ))
            }
            _ => None,
        }
    }
}

/// What the simulator tracks of secure aggregation.
#[derive(Default)]
pub struct Watch {
    /// Rounds in which a node crashed instead of revealing (`NetFaults::crash_on_reveal`).
    pub reveal_crashes: BTreeSet<u64>,
    /// (node, round) of every reveal a node published.
    pub reveals_out: BTreeSet<(usize, u64)>,
    /// Per round, the split a splitting validator made.
    pub splits: BTreeMap<u64, Split>,
    /// Per round, the selections honest reveals and shares named.
    named: BTreeMap<u64, BTreeSet<[u8; 32]>>,
}

impl Watch {
    /// An honest node's action: a violation when it reveals or shares for a second selection
    /// of a round.
    pub fn honest_action(&mut self, node: usize, a: &Action) -> Option<String> {
        let Action::Publish { bytes, .. } = a else {
            return None;
        };
        let (round, selection) = match SecAggMsg::decode(bytes)? {
            Ok(SecAggMsg::Reveal(r)) => (r.body.round, r.body.selection),
            Ok(SecAggMsg::Recovery(r)) => (r.body.round, r.body.selection),
            _ => return None,
        };
        let named = self.named.entry(round).or_default();
        (named.insert(selection) && named.len() == 2).then(|| {
            format!(
                "round {round}: node {node} revealed or shared for a second selection \
                 (honest reveals of one round name two included sets)"
            )
        })
    }
}
