//! Sans-IO, Tendermint-style BFT agreement on each training round's value.
//!
//! The protocol is specified in `PROTOCOL.md` beside this crate; every rule in
//! [`machine`] names the line of Algorithm 1 of Buchman, Kwon, Milosevic 2018 ("The latest
//! gossip on BFT consensus", arXiv:1807.04938) that it implements.
//!
//! The crate is pure: no clock, no network, no randomness, no async. One [`Consensus`] runs
//! one height: the host feeds [`Input`]s to [`Consensus::apply`] and performs the returned
//! [`Output`]s in order (persist before broadcast, schedule timers, ask the application).
//!
//! Module layout:
//! * [`types`]: heights, views, validators, values, proposals, votes, sign bytes;
//! * [`validators`]: validator sets, thresholds, proposer rotation, the `h + 2` schedule;
//! * [`signing`]: the `Signer` / `Verifier` traits, ed25519 and an insecure test scheme;
//! * [`keeper`]: the vote keeper (counting, duplicates, equivocation evidence);
//! * [`certificate`]: commit certificates and evidence, verifiable on their own;
//! * [`machine`]: the state machine, its inputs, outputs, timeouts and WAL recovery;
//! * [`wal`]: what is persisted before signing;
//! * [`codec`]: the versioned, size-limited wire encoding;
//! * `sim` (feature `sim`, and in tests): the deterministic fault simulator.

pub mod certificate;
pub mod codec;
pub mod error;
pub mod keeper;
pub mod machine;
pub mod signing;
pub mod types;
pub mod validators;
pub mod wal;

#[cfg(any(test, feature = "sim"))]
pub mod sim;

#[cfg(test)]
mod tests;

pub use certificate::{Certificate, CommitSignature, Evidence};
pub use codec::{
    MAX_MESSAGE_BYTES, MAX_VALUE_BYTES, Message, WIRE_VERSION, decode_certificate, decode_message,
    decode_wal_entry, encode_certificate, encode_message, encode_wal_entry,
};
pub use error::{Error, ErrorKind};
pub use keeper::{VoteKeeper, VoteOutcome};
pub use machine::{
    Consensus, Input, LinearTimeout, MAX_VIEW_LOOKAHEAD, Output, Params, Step, Timeout,
    TimeoutStep, Timeouts,
};
pub use signing::{
    Ed25519Signer, Ed25519Verifier, InsecureTestSigner, InsecureTestVerifier, Signer, Verifier,
};
pub use types::{
    ChainId, Height, Proposal, Signature, SignedProposal, SignedVote, ValidatorId, Value, ValueId,
    View, Vote, VoteKind,
};
pub use validators::{MAX_VALIDATORS, MembershipChange, ValidatorSchedule, ValidatorSet};
pub use wal::WalEntry;
