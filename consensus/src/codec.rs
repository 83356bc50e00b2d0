//! Wire encoding: one version byte, then bincode 2.0.1 with a fixed configuration (little
//! endian, fixed-width integers, a decode size limit). Decoding arbitrary bytes returns an
//! error and never panics (PROTOCOL.md section 2).

use serde::{Deserialize, Serialize};

use crate::certificate::{Certificate, Evidence};
use crate::error::Error;
use crate::types::{SignedProposal, SignedVote, Value};
use crate::validators::MAX_VALIDATORS;
use crate::wal::WalEntry;

/// Version byte in front of every encoded message.
pub const WIRE_VERSION: u8 = 1;
/// Largest value accepted in a proposal or commit.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Largest encoded message (a commit with a value of `MAX_VALUE_BYTES` and a certificate of
/// `MAX_VALIDATORS` signatures fits).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Fixint,
    bincode::config::Limit<MAX_MESSAGE_BYTES>,
>;

fn config() -> Config {
    bincode::config::standard()
        .with_fixed_int_encoding()
        .with_little_endian()
        .with_limit::<MAX_MESSAGE_BYTES>()
}

/// What validators gossip.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A signed proposal.
    Proposal(SignedProposal),
    /// A signed prevote or precommit.
    Vote(SignedVote),
    /// A decided value with its certificate (sync for nodes that missed the votes).
    Commit {
        /// The value.
        value: Value,
        /// Its certificate.
        certificate: Certificate,
    },
    /// Proof of equivocation, for peers to penalise the offender.
    Evidence(Evidence),
}

impl Message {
    /// The height the message belongs to.
    pub fn height(&self) -> crate::types::Height {
        match self {
            Message::Proposal(p) => p.proposal.height,
            Message::Vote(v) => v.vote.height,
            Message::Commit { certificate, .. } => certificate.height,
            Message::Evidence(e) => e.height(),
        }
    }

    /// Checks the size bounds a decoded message must respect.
    fn check_bounds(&self) -> Result<(), Error> {
        let value_len = match self {
            Message::Proposal(p) => p.proposal.value.0.len(),
            Message::Commit { value, .. } => value.0.len(),
            Message::Evidence(Evidence::ConflictingProposals { first, second }) => first
                .proposal
                .value
                .0
                .len()
                .max(second.proposal.value.0.len()),
            Message::Vote(_) | Message::Evidence(Evidence::ConflictingVotes { .. }) => 0,
        };
        if value_len > MAX_VALUE_BYTES {
            return Err(Error::ValueTooLarge {
                size: value_len,
                limit: MAX_VALUE_BYTES,
            });
        }
        if let Message::Commit { certificate, .. } = self
            && certificate.precommits.len() > MAX_VALIDATORS
        {
            return Err(Error::Malformed {
                reason: "certificate with more than MAX_VALIDATORS signatures".into(),
            });
        }
        Ok(())
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    let mut out = vec![WIRE_VERSION];
    let body = bincode::serde::encode_to_vec(value, config()).map_err(|e| Error::Malformed {
        reason: format!("encode: {e}"),
    })?;
    out.extend_from_slice(&body);
    if out.len() > MAX_MESSAGE_BYTES {
        return Err(Error::TooLarge {
            size: out.len(),
            limit: MAX_MESSAGE_BYTES,
        });
    }
    Ok(out)
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(Error::TooLarge {
            size: bytes.len(),
            limit: MAX_MESSAGE_BYTES,
        });
    }
    let Some((&version, body)) = bytes.split_first() else {
        return Err(Error::Malformed {
            reason: "empty".into(),
        });
    };
    if version != WIRE_VERSION {
        return Err(Error::Malformed {
            reason: format!("unknown wire version {version}"),
        });
    }
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(body, config()).map_err(|e| {
        Error::Malformed {
            reason: format!("decode: {e}"),
        }
    })?;
    if used != body.len() {
        return Err(Error::Malformed {
            reason: "trailing bytes".into(),
        });
    }
    Ok(value)
}

/// Encodes a message for gossip. Fails only when the message exceeds [`MAX_MESSAGE_BYTES`].
pub fn encode_message(message: &Message) -> Result<Vec<u8>, Error> {
    encode(message)
}

/// Decodes a gossiped message; checks size bounds (not signatures: `Consensus` does that).
pub fn decode_message(bytes: &[u8]) -> Result<Message, Error> {
    let message: Message = decode(bytes)?;
    message.check_bounds()?;
    Ok(message)
}

/// Encodes a WAL entry for the host to append durably.
pub fn encode_wal_entry(entry: &WalEntry) -> Result<Vec<u8>, Error> {
    encode(entry)
}

/// Decodes a WAL entry written by [`encode_wal_entry`].
pub fn decode_wal_entry(bytes: &[u8]) -> Result<WalEntry, Error> {
    decode(bytes)
}

/// Encodes a certificate (for the node's ledger).
pub fn encode_certificate(certificate: &Certificate) -> Result<Vec<u8>, Error> {
    encode(certificate)
}

/// Decodes a certificate; at most [`MAX_VALIDATORS`] signatures.
pub fn decode_certificate(bytes: &[u8]) -> Result<Certificate, Error> {
    let certificate: Certificate = decode(bytes)?;
    if certificate.precommits.len() > MAX_VALIDATORS {
        return Err(Error::Malformed {
            reason: "certificate with more than MAX_VALIDATORS signatures".into(),
        });
    }
    Ok(certificate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::InsecureTestSigner;
    use crate::types::{ChainId, Height, Proposal, ValidatorId, ValueId, View, Vote, VoteKind};

    fn samples() -> Vec<Message> {
        let chain = ChainId::new("codec").unwrap();
        let who = ValidatorId([3; 32]);
        let signer = InsecureTestSigner::new(who);
        let vote = Vote {
            height: Height(7),
            view: View(2),
            kind: VoteKind::Precommit,
            value: Some(ValueId([5; 32])),
            validator: who,
        }
        .sign(&chain, &signer);
        let proposal = Proposal {
            height: Height(7),
            view: View(2),
            value: Value(vec![1, 2, 3]),
            valid_round: Some(View(1)),
            proposer: who,
        }
        .sign(&chain, &signer);
        let certificate =
            Certificate::from_precommits(Height(7), View(2), ValueId([5; 32]), [&vote]);
        vec![
            Message::Vote(vote),
            Message::Proposal(proposal),
            Message::Commit {
                value: Value(vec![9; 100]),
                certificate,
            },
        ]
    }

    #[test]
    fn round_trips_and_rejects_trailing_bytes() {
        for message in samples() {
            let bytes = encode_message(&message).unwrap();
            assert_eq!(decode_message(&bytes).unwrap(), message);
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(decode_message(&longer).is_err());
            let mut wrong_version = bytes.clone();
            wrong_version[0] = 2;
            assert!(decode_message(&wrong_version).is_err());
            // Every strict prefix fails to decode.
            for cut in 0..bytes.len() {
                assert!(decode_message(&bytes[..cut]).is_err(), "prefix {cut}");
            }
        }
    }

    #[test]
    fn vote_encoding_is_compact_and_fixed() {
        let bytes = encode_message(&samples()[0]).unwrap();
        // version + enum tag (u32) + height u64 + view u32 + kind u32 + option tag + id
        // + validator + signature
        assert_eq!(bytes.len(), 1 + 4 + 8 + 4 + 4 + 1 + 32 + 32 + 64);
    }

    #[test]
    fn oversized_values_are_refused() {
        let chain = ChainId::new("codec").unwrap();
        let who = ValidatorId([3; 32]);
        let proposal = Proposal {
            height: Height(1),
            view: View(0),
            value: Value(vec![0; MAX_VALUE_BYTES + 1]),
            valid_round: None,
            proposer: who,
        }
        .sign(&chain, &InsecureTestSigner::new(who));
        let bytes = encode_message(&Message::Proposal(proposal)).unwrap();
        assert!(matches!(
            decode_message(&bytes),
            Err(Error::ValueTooLarge { .. })
        ));
        // A length prefix claiming a huge vector is refused without allocating it.
        let mut bomb = vec![WIRE_VERSION, 2, 0, 0, 0];
        bomb.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_message(&bomb).is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        // Seeded splitmix64: random strings and random mutations of valid encodings.
        let mut state = 0x5eed_u64;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let valid: Vec<Vec<u8>> = samples()
            .iter()
            .map(|m| encode_message(m).unwrap())
            .collect();
        let mut decoded_ok = 0;
        for i in 0..20_000 {
            let bytes: Vec<u8> = if i % 2 == 0 {
                let len = (next() % 300) as usize;
                let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if let Some(first) = b.first_mut() {
                    *first = WIRE_VERSION;
                }
                b
            } else {
                let mut b = valid[(next() % valid.len() as u64) as usize].clone();
                for _ in 0..1 + next() % 3 {
                    let pos = (next() % b.len() as u64) as usize;
                    b[pos] = next() as u8;
                }
                b
            };
            if decode_message(&bytes).is_ok() {
                decoded_ok += 1;
            }
            let _ = decode_wal_entry(&bytes);
            let _ = decode_certificate(&bytes);
        }
        // Mutations inside signatures or ids still decode; the decoder is not trivially
        // rejecting everything.
        assert!(decoded_ok > 0);
    }
}
