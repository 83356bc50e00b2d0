//! Plain data: heights, views, validators, values, proposals, votes and their sign bytes
//! (PROTOCOL.md sections 1 and 2).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::signing::Signer;

/// A training round; one agreement instance decides one value per height.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Height(pub u64);

/// A view within a height (the paper's "round").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct View(pub u32);

impl View {
    /// The next view, saturating at `u32::MAX` (unreachable in practice: views only grow by
    /// one per timeout or by the view-skip rule within the look-ahead window).
    pub fn next(self) -> View {
        View(self.0.saturating_add(1))
    }
}

impl fmt::Display for Height {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A validator: its ed25519 public key bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ValidatorId(pub [u8; 32]);

impl fmt::Debug for ValidatorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "V:{}", hex8(&self.0))
    }
}

impl fmt::Display for ValidatorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// `SHA-256(value bytes)`: what votes and certificates name.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ValueId(pub [u8; 32]);

impl fmt::Debug for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "id:{}", hex8(&self.0))
    }
}

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The first 4 bytes in hex: enough to tell ids apart in logs.
fn hex8(bytes: &[u8; 32]) -> String {
    hex::encode(&bytes[..4])
}

/// The opaque value agreed on; the node fills it (delta digests, aggregate hash, ...).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Value(pub Vec<u8>);

impl Value {
    /// `SHA-256` of the bytes.
    pub fn id(&self) -> ValueId {
        ValueId(Sha256::digest(&self.0).into())
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Value({} bytes, {:?})", self.0.len(), self.id())
    }
}

/// An ed25519 signature (64 bytes), or a test scheme's 64 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sig({}..)", hex::encode(&self.0[..4]))
    }
}

// serde implements arrays only up to 32 elements: encode as two fixed halves (no length
// prefix under bincode's fixed configuration, so 64 bytes on the wire).
impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut lo = [0u8; 32];
        let mut hi = [0u8; 32];
        lo.copy_from_slice(&self.0[..32]);
        hi.copy_from_slice(&self.0[32..]);
        (lo, hi).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (lo, hi) = <([u8; 32], [u8; 32])>::deserialize(deserializer)?;
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&lo);
        out[32..].copy_from_slice(&hi);
        Ok(Signature(out))
    }
}

/// The network's name, bound into every signature (at most [`ChainId::MAX_LEN`] bytes).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChainId(String);

impl ChainId {
    /// Longest accepted chain id in bytes.
    pub const MAX_LEN: usize = 64;

    /// A chain id; `None` when longer than [`ChainId::MAX_LEN`] bytes.
    pub fn new(name: impl Into<String>) -> Option<ChainId> {
        let name = name.into();
        (name.len() <= Self::MAX_LEN).then_some(ChainId(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The two vote steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum VoteKind {
    /// First voting step.
    Prevote,
    /// Second voting step; a quorum of these for one value decides it.
    Precommit,
}

/// A proposal (the paper's `PROPOSAL(h, round, v, validRound)`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Height proposed for.
    pub height: Height,
    /// View proposed in.
    pub view: View,
    /// The value (full bytes).
    pub value: Value,
    /// The view of the polka that made this the proposer's valid value; `None` is the
    /// paper's -1 (a fresh value).
    pub valid_round: Option<View>,
    /// The proposer; must be `proposer(height, view)`.
    pub proposer: ValidatorId,
}

/// A vote (the paper's `PREVOTE` / `PRECOMMIT`); `value: None` is a vote for nil.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Vote {
    /// Height voted in.
    pub height: Height,
    /// View voted in.
    pub view: View,
    /// Prevote or precommit.
    pub kind: VoteKind,
    /// The value id voted for, or nil.
    pub value: Option<ValueId>,
    /// Who votes.
    pub validator: ValidatorId,
}

/// A proposal with its proposer's signature over [`Proposal::sign_bytes`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedProposal {
    /// The proposal.
    pub proposal: Proposal,
    /// Signature by `proposal.proposer`.
    pub signature: Signature,
}

/// A vote with its validator's signature over [`Vote::sign_bytes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignedVote {
    /// The vote.
    pub vote: Vote,
    /// Signature by `vote.validator`.
    pub signature: Signature,
}

/// Domain separation prefix of every signed message (PROTOCOL.md section 2).
pub const SIGN_DOMAIN: &[u8] = b"cohort/consensus/v1\0";

const TAG_PROPOSAL: u8 = 1;
const TAG_PREVOTE: u8 = 2;
const TAG_PRECOMMIT: u8 = 3;

fn sign_header(out: &mut Vec<u8>, tag: u8, chain_id: &ChainId, height: Height, view: View) {
    out.extend_from_slice(SIGN_DOMAIN);
    out.push(tag);
    let name = chain_id.as_str().as_bytes();
    // ChainId::new bounds the length to 64, so it fits in one byte.
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&height.0.to_le_bytes());
    out.extend_from_slice(&view.0.to_le_bytes());
}

impl Vote {
    /// The fixed-layout, domain-separated bytes a validator signs for this vote.
    pub fn sign_bytes(&self, chain_id: &ChainId) -> Vec<u8> {
        let tag = match self.kind {
            VoteKind::Prevote => TAG_PREVOTE,
            VoteKind::Precommit => TAG_PRECOMMIT,
        };
        let mut out = Vec::with_capacity(SIGN_DOMAIN.len() + 2 + 64 + 12 + 33);
        sign_header(&mut out, tag, chain_id, self.height, self.view);
        match self.value {
            None => out.push(0),
            Some(id) => {
                out.push(1);
                out.extend_from_slice(&id.0);
            }
        }
        out
    }

    /// Signs this vote. The caller must be `self.validator`.
    pub fn sign(self, chain_id: &ChainId, signer: &dyn Signer) -> SignedVote {
        let signature = signer.sign(&self.sign_bytes(chain_id));
        SignedVote {
            vote: self,
            signature,
        }
    }
}

impl Proposal {
    /// The fixed-layout, domain-separated bytes the proposer signs (the value enters through
    /// its id).
    pub fn sign_bytes(&self, chain_id: &ChainId) -> Vec<u8> {
        let mut out = Vec::with_capacity(SIGN_DOMAIN.len() + 2 + 64 + 12 + 37);
        sign_header(&mut out, TAG_PROPOSAL, chain_id, self.height, self.view);
        match self.valid_round {
            None => out.push(0),
            Some(vr) => {
                out.push(1);
                out.extend_from_slice(&vr.0.to_le_bytes());
            }
        }
        out.extend_from_slice(&self.value.id().0);
        out
    }

    /// Signs this proposal. The caller must be `self.proposer`.
    pub fn sign(self, chain_id: &ChainId, signer: &dyn Signer) -> SignedProposal {
        let signature = signer.sign(&self.sign_bytes(chain_id));
        SignedProposal {
            proposal: self,
            signature,
        }
    }
}
