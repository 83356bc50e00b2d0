//! Recovery of an included member's self seed when it drops after the included set is fixed
//! (Bonawitz et al. 2017: shares of `b_u` for a member that dropped after sending its masked
//! input).
//!
//! When it masks, a member splits its self seed `b` with threshold `t` ([`shamir`]) into one
//! share per other roster member: holder `j` gets the share at `x = 1 + j's index in the
//! roster`. Each share travels in the member's masked payload as a [`SealedShare`]:
//! ChaCha20-Poly1305 under a key only the two can derive (SHA-256 of a `share key` label, the
//! domain, the sender's and the holder's identities and X25519 keys in that order, and their
//! X25519 shared secret), and a public commitment to the plain share (SHA-256 of a `share
//! commit` label, the domain, both identities and the share). The AEAD tag lets the holder
//! detect a changed share; the commitment lets anyone check a share a holder later publishes.
//!
//! **The key is not the pair seed.** Pair seeds with excluded members are revealed in the
//! clear ([`super::reveal`]); a share key derived from them would then open the shares of an
//! excluded member's self seed to everyone. The share key hashes the same shared secret under
//! another label, which a revealed pair seed says nothing about.
//!
//! **Coefficients.** The polynomial's coefficients are SHA-256 of a label, the domain, `b` and
//! the coefficient's degree: as secret as `b` itself (fresh from the OS CSPRNG each round), so
//! `t - 1` shares leave 256 unknown bits; the module stays pure (no randomness of its own).
//!
//! **Pair seeds.** A silent included member's pair seeds with excluded members are still
//! needed to unmask; each excluded member that is alive publishes its own
//! ([`excluded_pair_seed`]), checked against the silent member's pair commitment.
//!
//! **What stays hidden.** Fewer than `t` holders learn nothing about `b` from their shares.
//! An honest holder publishes its share of `b` only for a member included in the first
//! selection it saw: with one selection seen by all, an excluded member's `b` (the only thing
//! that hides its late vector once its pair seeds are revealed) is reconstructed only by `t`
//! colluding holders. A signer that shows different holders different selections can collect
//! shares of it (see the node's `protocol::secure` threat model).

use chacha20poly1305::aead::AeadInPlace as _;
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit as _, Nonce, Tag};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::{
    Advert, Domain, MemberId, MemberSecrets, SecAggError, commit, find, own_advert, pair_seed,
    shamir, short,
};

/// One share of a member's self seed, sealed to one holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedShare {
    /// Who can open it.
    pub holder: MemberId,
    /// The share under ChaCha20-Poly1305 (zero nonce: the key seals this one message).
    pub ciphertext: [u8; 32],
    /// The AEAD tag (associated data: sender and holder ids).
    pub tag: [u8; 16],
    /// Commitment to the plain share (see the module doc).
    pub commit: [u8; 32],
}

/// The x of `holder`'s share: 1 + its index in the roster.
fn x_of(roster: &[Advert], holder: &MemberId) -> Result<u16, SecAggError> {
    let i = roster
        .iter()
        .position(|a| a.member == *holder)
        .ok_or_else(|| SecAggError::NotOnRoster {
            member: short(holder),
        })?;
    u16::try_from(i + 1).map_err(|_| SecAggError::TooManyMembers {
        members: roster.len(),
        max: usize::from(u16::MAX),
    })
}

/// The key sealing `sender`'s share to `holder`, from `own` secrets (either side's).
fn share_key(
    domain: &Domain,
    secrets: &MemberSecrets,
    sender: &Advert,
    holder: &Advert,
    other: &Advert,
) -> Result<[u8; 32], SecAggError> {
    let shared = super::shared_secret(secrets, other)?;
    let mut h = domain.hash(b"share key");
    for a in [sender, holder] {
        h.update(a.member);
        h.update(a.public_key);
    }
    h.update(shared);
    Ok(h.finalize().into())
}

fn aad(sender: &MemberId, holder: &MemberId) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(sender);
    out[32..].copy_from_slice(holder);
    out
}

/// The public commitment to `sender`'s plain share for `holder`.
pub fn share_commit(
    domain: &Domain,
    sender: &MemberId,
    holder: &MemberId,
    share: &[u8; 32],
) -> [u8; 32] {
    let mut h = domain.hash(b"share commit");
    h.update(sender);
    h.update(holder);
    h.update(share);
    h.finalize().into()
}

/// `me`'s self seed split with `threshold` into one sealed share per other roster member, in
/// roster order. `threshold` must be 1 to the number of other members (none: no shares).
pub fn share_self_seed(
    domain: &Domain,
    roster: &[Advert],
    me: &MemberId,
    secrets: &MemberSecrets,
    threshold: usize,
) -> Result<Vec<SealedShare>, SecAggError> {
    let mine = own_advert(roster, me, secrets)?;
    let others: Vec<&Advert> = roster.iter().filter(|a| a.member != *me).collect();
    if others.is_empty() {
        return Ok(Vec::new());
    }
    if threshold == 0 || threshold > others.len() {
        return Err(SecAggError::BadThreshold {
            threshold,
            holders: others.len(),
        });
    }
    let coefficients: Vec<[u8; 32]> = (1..threshold as u64)
        .map(|k| {
            let mut h = domain.hash(b"shamir coefficient");
            h.update(secrets.self_seed);
            h.update(k.to_le_bytes());
            h.finalize().into()
        })
        .collect();
    let xs = others
        .iter()
        .map(|a| x_of(roster, &a.member))
        .collect::<Result<Vec<u16>, _>>()?;
    let shares = shamir::split(&secrets.self_seed, &coefficients, &xs);
    others
        .iter()
        .zip(shares)
        .map(|(holder, share)| {
            let key = share_key(domain, secrets, mine, holder, holder)?;
            let mut ciphertext = share;
            let tag = ChaCha20Poly1305::new(Key::from_slice(&key))
                .encrypt_in_place_detached(
                    &Nonce::default(),
                    &aad(me, &holder.member),
                    &mut ciphertext,
                )
                .map_err(|_| SecAggError::BadShare {
                    member: short(me),
                    holder: short(&holder.member),
                })?;
            Ok(SealedShare {
                holder: holder.member,
                ciphertext,
                tag: tag.into(),
                commit: share_commit(domain, me, &holder.member, &share),
            })
        })
        .collect()
}

/// `me` opens the share `sender` sealed to it: decrypted, authenticated and checked against its
/// commitment; a share sealed to someone else, changed, or sealed with another key is an error.
pub fn open_share(
    domain: &Domain,
    roster: &[Advert],
    me: &MemberId,
    secrets: &MemberSecrets,
    sender: &MemberId,
    sealed: &SealedShare,
) -> Result<[u8; 32], SecAggError> {
    let mine = own_advert(roster, me, secrets)?;
    let from = find(roster, sender)?;
    let bad = || SecAggError::BadShare {
        member: short(sender),
        holder: short(me),
    };
    if sealed.holder != *me || sender == me {
        return Err(bad());
    }
    let key = share_key(domain, secrets, from, mine, from)?;
    let mut share = sealed.ciphertext;
    ChaCha20Poly1305::new(Key::from_slice(&key))
        .decrypt_in_place_detached(
            &Nonce::default(),
            &aad(sender, me),
            &mut share,
            Tag::from_slice(&sealed.tag),
        )
        .map_err(|_| bad())?;
    if share_commit(domain, sender, me, &share) != sealed.commit {
        return Err(bad());
    }
    Ok(share)
}

/// `member`'s self seed from published shares `(holder, share)`: every holder on the roster,
/// not `member`, at most once, each share matching its commitment in `sealed` (the member's
/// sealed shares); at least `threshold` of them; the result must match `self_commit`.
pub fn recover_self_seed(
    domain: &Domain,
    roster: &[Advert],
    member: &MemberId,
    self_commit: &[u8; 32],
    sealed: &[SealedShare],
    shares: &[(MemberId, [u8; 32])],
    threshold: usize,
) -> Result<[u8; 32], SecAggError> {
    find(roster, member)?;
    let mut points = Vec::with_capacity(shares.len());
    let mut seen = std::collections::BTreeSet::new();
    for (holder, share) in shares {
        if holder == member || !seen.insert(*holder) {
            return Err(SecAggError::Duplicate {
                member: short(holder),
            });
        }
        let committed = sealed
            .iter()
            .find(|s| s.holder == *holder)
            .map(|s| s.commit);
        if committed != Some(share_commit(domain, member, holder, share)) {
            return Err(SecAggError::BadShare {
                member: short(member),
                holder: short(holder),
            });
        }
        points.push((x_of(roster, holder)?, *share));
    }
    if threshold == 0 || points.len() < threshold {
        return Err(SecAggError::TooFewShares {
            member: short(member),
            got: points.len(),
            need: threshold,
        });
    }
    let seed = shamir::combine(&points).ok_or(SecAggError::TooFewShares {
        member: short(member),
        got: points.len(),
        need: threshold,
    })?;
    if commit(domain, &seed) != *self_commit {
        return Err(SecAggError::BadSelfSeed {
            member: short(member),
        });
    }
    Ok(seed)
}

/// The pair seed of `me` with `other`, which an *excluded* member publishes for a silent
/// included `other` (what `other` would have revealed itself: `me`'s own vector stays hidden
/// by its self seed, which is never revealed or recovered while it is excluded).
pub fn excluded_pair_seed(
    domain: &Domain,
    roster: &[Advert],
    me: &MemberId,
    secrets: &MemberSecrets,
    other: &MemberId,
) -> Result<[u8; 32], SecAggError> {
    let mine = own_advert(roster, me, secrets)?;
    let theirs = find(roster, other)?;
    if other == me {
        return Err(SecAggError::Duplicate { member: short(me) });
    }
    pair_seed(domain, secrets, mine, theirs)
}

/// Whether `seed` matches the commitment `committed` (a pair seed against a member's
/// `pair_commits` entry).
pub fn seed_matches(domain: &Domain, seed: &[u8; 32], committed: &[u8; 32]) -> bool {
    commit(domain, seed) == *committed
}
