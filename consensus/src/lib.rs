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
//!
//! # The host loop, on one validator that decides alone
//!
//! ```
//! use consensus::*;
//!
//! let signer = InsecureTestSigner::new(ValidatorId([1; 32])); // Ed25519Signer in the node
//! let set = ValidatorSet::new(vec![signer.id()]).unwrap();
//! let params = Params { chain_id: ChainId::new("doc").unwrap(), timeouts: Timeouts::default(), skip_proposers: vec![] };
//! let mut machine = Consensus::new(params, Height(1), set, Box::new(signer), Box::new(InsecureTestVerifier));
//! let mut inputs = vec![Input::StartHeight];
//! let mut wal = Vec::new();
//! let mut decided = None;
//! while let Some(input) = inputs.pop() {
//!     for output in machine.apply(input).unwrap() {
//!         match output {
//!             // Durable (fsync) before anything that follows.
//!             Output::Persist(entry) => wal.push(encode_wal_entry(&entry).unwrap()),
//!             Output::Broadcast(message) => { let _bytes = encode_message(&message).unwrap(); }
//!             Output::ScheduleTimeout { .. } => {}
//!             Output::GetValue { height, view } => {
//!                 inputs.push(Input::ProposeValue { height, view, value: Value(b"aggregate".to_vec()) })
//!             }
//!             Output::ValidateValue { id, .. } => inputs.push(Input::ValueVerdict { id, valid: true }),
//!             Output::Decided { value, certificate, .. } => decided = Some((value, certificate)),
//!             Output::Evidence(_) => {}
//!         }
//!     }
//! }
//! let (value, certificate) = decided.unwrap();
//! assert_eq!(value, Value(b"aggregate".to_vec()));
//! assert_eq!(certificate.value_id, value.id());
//! assert_eq!(wal.len(), 4); // proposal, prevote, lock, precommit
//! ```

// Pure protocol logic never panics on peer input: no unwrap, expect or panic outside tests
// (the simulator, test-only code, opts out explicitly).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

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
#[allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
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
    Ed25519KeyCache, Ed25519Signer, Ed25519Verifier, InsecureTestSigner, InsecureTestVerifier,
    Signer, Verifier,
};
pub use types::{
    ChainId, Height, Proposal, Signature, SignedProposal, SignedVote, ValidatorId, Value, ValueId,
    View, Vote, VoteKind,
};
pub use validators::{MAX_VALIDATORS, MembershipChange, ValidatorSchedule, ValidatorSet};
pub use wal::WalEntry;
