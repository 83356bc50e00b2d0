//! The crate's one error type. Each variant says whether the peer misbehaved (reject and
//! penalise), the message is not valid yet (buffer or ignore), or it is merely stale or a
//! duplicate (ignore).

use crate::types::{Height, ValidatorId, View};

/// How the host should treat a refused input (gossip: Reject / Ignore).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The sender signed or sent something no honest node sends: reject, penalise.
    Misbehaviour,
    /// Possibly fine later (a future height or view): buffer or ignore, no penalty.
    NotValidYet,
    /// Old, duplicate or irrelevant: ignore, no penalty.
    Ignored,
    /// A local mistake of the host (wrong configuration or call order).
    Local,
}

/// Everything that can be refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// Bytes that do not decode as a message of this crate.
    #[error("malformed message: {reason}")]
    Malformed {
        /// What was wrong.
        reason: String,
    },
    /// An encoded message over the size limit.
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Size seen.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// A signature that does not verify.
    #[error("invalid signature by {validator}")]
    InvalidSignature {
        /// Claimed signer.
        validator: ValidatorId,
    },
    /// A message from a key that is not in this height's validator set.
    #[error("{validator} is not a validator at height {height}")]
    UnknownValidator {
        /// The key.
        validator: ValidatorId,
        /// The height.
        height: Height,
    },
    /// A proposal from someone other than the view's proposer.
    #[error("proposal for height {height} view {view} by {got}, expected {expected}")]
    WrongProposer {
        /// Height.
        height: Height,
        /// View.
        view: View,
        /// The rightful proposer.
        expected: ValidatorId,
        /// The signer.
        got: ValidatorId,
    },
    /// A proposal whose valid round is not below its view.
    #[error("proposal in view {view} has valid round {valid_round}, not below the view")]
    InvalidValidRound {
        /// The proposal's view.
        view: View,
        /// Its valid round.
        valid_round: View,
    },
    /// A value longer than `MAX_VALUE_BYTES`.
    #[error("value of {size} bytes exceeds the limit of {limit}")]
    ValueTooLarge {
        /// Size seen.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// A certificate that does not prove a decision.
    #[error("invalid certificate: {reason}")]
    InvalidCertificate {
        /// What was wrong.
        reason: &'static str,
    },
    /// Evidence that does not prove equivocation.
    #[error("invalid evidence: {reason}")]
    InvalidEvidence {
        /// What was wrong.
        reason: &'static str,
    },
    /// A message for a later height than this instance runs.
    #[error("message for future height {got}, running {expected}")]
    FutureHeight {
        /// The message's height.
        got: Height,
        /// This instance's height.
        expected: Height,
    },
    /// A message for an earlier height than this instance runs.
    #[error("message for past height {got}, running {expected}")]
    PastHeight {
        /// The message's height.
        got: Height,
        /// This instance's height.
        expected: Height,
    },
    /// A message too far ahead of the current view.
    #[error("message for view {got}, more than the look-ahead beyond view {current}")]
    ViewTooFarAhead {
        /// The message's view.
        got: View,
        /// The current view.
        current: View,
    },
    /// The exact message was already received.
    #[error("duplicate message")]
    Duplicate,
    /// This height has decided; the message is no longer needed.
    #[error("height {height} already decided")]
    AlreadyDecided {
        /// The height.
        height: Height,
    },
    /// Too many distinct proposals in one view kept already (a Byzantine proposer).
    #[error("too many proposals for view {view}")]
    TooManyProposals {
        /// The view.
        view: View,
    },
    /// The validator set given by the host is unusable.
    #[error("invalid validator set: {reason}")]
    InvalidValidatorSet {
        /// What was wrong.
        reason: &'static str,
    },
    /// The host asked for a height's set the schedule does not know.
    #[error("no validator set known for height {height}")]
    UnknownValidatorSet {
        /// The height.
        height: Height,
    },
    /// WAL entries that do not belong to this node and height.
    #[error("invalid WAL entry: {reason}")]
    InvalidWal {
        /// What was wrong.
        reason: &'static str,
    },
    /// An input before `StartHeight`.
    #[error("height not started yet")]
    NotStarted,
}

impl Error {
    /// How the host should treat this refusal.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Malformed { .. }
            | Error::TooLarge { .. }
            | Error::InvalidSignature { .. }
            | Error::UnknownValidator { .. }
            | Error::WrongProposer { .. }
            | Error::InvalidValidRound { .. }
            | Error::ValueTooLarge { .. }
            | Error::InvalidCertificate { .. }
            | Error::InvalidEvidence { .. }
            | Error::TooManyProposals { .. } => ErrorKind::Misbehaviour,
            Error::FutureHeight { .. } | Error::ViewTooFarAhead { .. } => ErrorKind::NotValidYet,
            Error::PastHeight { .. } | Error::Duplicate | Error::AlreadyDecided { .. } => {
                ErrorKind::Ignored
            }
            Error::InvalidValidatorSet { .. }
            | Error::UnknownValidatorSet { .. }
            | Error::InvalidWal { .. }
            | Error::NotStarted => ErrorKind::Local,
        }
    }

    /// True when the sender should be rejected and penalised.
    pub fn is_misbehaviour(&self) -> bool {
        self.kind() == ErrorKind::Misbehaviour
    }
}
