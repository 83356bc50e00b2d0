//! What a validator persists before it signs (PROTOCOL.md section 6).

use serde::{Deserialize, Serialize};

use crate::types::{SignedProposal, SignedVote, Value, View};

/// One write-ahead-log entry. The host appends each `Output::Persist(entry)` durably
/// (fsync) before performing any later output of the same `apply` call, and hands the
/// entries of the current height back to `Consensus::recover` after a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WalEntry {
    /// A proposal this node signed.
    Proposal(SignedProposal),
    /// This node locked on `value` in `view` (written before the precommit for it).
    Locked {
        /// The view of the lock.
        view: View,
        /// The locked value's bytes (re-proposed as the valid value).
        value: Value,
        /// The quorum of signed prevotes for it in `view` that justified the lock. After a
        /// restart the node needs them to prevote a re-proposal of its locked value (line 28)
        /// and to relay them with its own re-proposal; without them the simulator found
        /// views failing forever when two locked validators had restarted.
        polka: Vec<SignedVote>,
    },
    /// A vote this node signed.
    Vote(SignedVote),
}
