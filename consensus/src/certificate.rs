//! Commit certificates and equivocation evidence; both verify on their own against a
//! validator set (PROTOCOL.md sections 4 and 5).

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::signing::Verifier;
use crate::types::{
    ChainId, Height, Signature, SignedProposal, SignedVote, ValidatorId, ValueId, View, Vote,
    VoteKind,
};
use crate::validators::{MAX_VALIDATORS, ValidatorSet};

/// One validator's precommit signature inside a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitSignature {
    /// The signer.
    pub validator: ValidatorId,
    /// Its signature over `Precommit(height, view, value_id)`.
    pub signature: Signature,
}

/// Proof that `value_id` was decided at `height`: precommits of a quorum in `view`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// The height decided.
    pub height: Height,
    /// The view whose precommits decided it.
    pub view: View,
    /// The decided value's id (`SHA-256` of its bytes).
    pub value_id: ValueId,
    /// Precommit signatures, sorted by validator, no duplicates.
    pub precommits: Vec<CommitSignature>,
}

impl Certificate {
    /// Builds a certificate from precommit votes for one (height, view, value); sorts them.
    /// Votes that do not match are skipped.
    pub fn from_precommits<'a>(
        height: Height,
        view: View,
        value_id: ValueId,
        votes: impl IntoIterator<Item = &'a SignedVote>,
    ) -> Certificate {
        let mut precommits: Vec<CommitSignature> = votes
            .into_iter()
            .filter(|sv| {
                sv.vote.height == height
                    && sv.vote.view == view
                    && sv.vote.kind == VoteKind::Precommit
                    && sv.vote.value == Some(value_id)
            })
            .map(|sv| CommitSignature {
                validator: sv.vote.validator,
                signature: sv.signature,
            })
            .collect();
        precommits.sort_by_key(|c| c.validator);
        precommits.dedup_by(|a, b| a.validator == b.validator);
        Certificate {
            height,
            view,
            value_id,
            precommits,
        }
    }

    /// Checks the certificate against the validator set of its height: signers sorted,
    /// distinct, members, at least a quorum, every signature valid.
    pub fn verify(
        &self,
        set: &ValidatorSet,
        chain_id: &ChainId,
        verifier: &dyn Verifier,
    ) -> Result<(), Error> {
        if self.precommits.len() > MAX_VALIDATORS {
            return Err(Error::InvalidCertificate {
                reason: "more signatures than MAX_VALIDATORS",
            });
        }
        if self
            .precommits
            .windows(2)
            .any(|w| w[0].validator >= w[1].validator)
        {
            return Err(Error::InvalidCertificate {
                reason: "signers not sorted or duplicated",
            });
        }
        if self.precommits.len() < set.quorum() {
            return Err(Error::InvalidCertificate {
                reason: "fewer signatures than a quorum",
            });
        }
        for sig in &self.precommits {
            if !set.contains(&sig.validator) {
                return Err(Error::InvalidCertificate {
                    reason: "signer is not a validator of this height",
                });
            }
            let vote = Vote {
                height: self.height,
                view: self.view,
                kind: VoteKind::Precommit,
                value: Some(self.value_id),
                validator: sig.validator,
            };
            if !verifier.verify(&sig.validator, &vote.sign_bytes(chain_id), &sig.signature) {
                return Err(Error::InvalidCertificate {
                    reason: "invalid precommit signature",
                });
            }
        }
        Ok(())
    }

    /// [`Certificate::verify`] plus a check that it is for `height`.
    pub fn verify_for_height(
        &self,
        height: Height,
        set: &ValidatorSet,
        chain_id: &ChainId,
        verifier: &dyn Verifier,
    ) -> Result<(), Error> {
        if self.height != height {
            return Err(Error::InvalidCertificate {
                reason: "certificate for another height",
            });
        }
        self.verify(set, chain_id, verifier)
    }
}

/// Proof that a validator signed two different messages for one step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Evidence {
    /// Two different votes for one (height, view, kind).
    ConflictingVotes {
        /// The vote received first.
        first: Box<SignedVote>,
        /// The conflicting one.
        second: Box<SignedVote>,
    },
    /// Two different proposals for one (height, view) by its proposer.
    ConflictingProposals {
        /// The proposal received first.
        first: Box<SignedProposal>,
        /// The conflicting one.
        second: Box<SignedProposal>,
    },
}

impl Evidence {
    /// The validator proven faulty.
    pub fn offender(&self) -> ValidatorId {
        match self {
            Evidence::ConflictingVotes { first, .. } => first.vote.validator,
            Evidence::ConflictingProposals { first, .. } => first.proposal.proposer,
        }
    }

    /// The height of the offence.
    pub fn height(&self) -> Height {
        match self {
            Evidence::ConflictingVotes { first, .. } => first.vote.height,
            Evidence::ConflictingProposals { first, .. } => first.proposal.height,
        }
    }

    /// Checks the evidence on its own: same signer (a member of `set`), same step, different
    /// content, both signatures valid.
    pub fn verify(
        &self,
        set: &ValidatorSet,
        chain_id: &ChainId,
        verifier: &dyn Verifier,
    ) -> Result<(), Error> {
        match self {
            Evidence::ConflictingVotes { first, second } => {
                let (a, b) = (&first.vote, &second.vote);
                if a.validator != b.validator
                    || a.height != b.height
                    || a.view != b.view
                    || a.kind != b.kind
                {
                    return Err(Error::InvalidEvidence {
                        reason: "votes are not for one validator and step",
                    });
                }
                if a.value == b.value {
                    return Err(Error::InvalidEvidence {
                        reason: "votes do not conflict",
                    });
                }
                if !set.contains(&a.validator) {
                    return Err(Error::InvalidEvidence {
                        reason: "offender is not a validator",
                    });
                }
                for sv in [first.as_ref(), second.as_ref()] {
                    if !verifier.verify(&a.validator, &sv.vote.sign_bytes(chain_id), &sv.signature)
                    {
                        return Err(Error::InvalidEvidence {
                            reason: "invalid signature",
                        });
                    }
                }
                Ok(())
            }
            Evidence::ConflictingProposals { first, second } => {
                let (a, b) = (&first.proposal, &second.proposal);
                if a.proposer != b.proposer || a.height != b.height || a.view != b.view {
                    return Err(Error::InvalidEvidence {
                        reason: "proposals are not for one proposer and view",
                    });
                }
                if a.value.id() == b.value.id() && a.valid_round == b.valid_round {
                    return Err(Error::InvalidEvidence {
                        reason: "proposals do not conflict",
                    });
                }
                if !set.contains(&a.proposer) {
                    return Err(Error::InvalidEvidence {
                        reason: "offender is not a validator",
                    });
                }
                for sp in [first.as_ref(), second.as_ref()] {
                    let bytes = sp.proposal.sign_bytes(chain_id);
                    if !verifier.verify(&a.proposer, &bytes, &sp.signature) {
                        return Err(Error::InvalidEvidence {
                            reason: "invalid signature",
                        });
                    }
                }
                Ok(())
            }
        }
    }
}
