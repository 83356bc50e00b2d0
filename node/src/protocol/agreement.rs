//! Secure aggregation's consistency step (the consistency check of Bonawitz et al. 2017, in a
//! BFT network): no member reveals a seed, and no holder publishes a share, for a selection
//! until a quorum of the round's validators acknowledged that same selection.
//!
//! Why: any validator can sign a selection. One that signs two, one including member A and one
//! excluding it, and shows each to different members, would otherwise collect A's self seed
//! from A (who reveals for the set that includes it) and the pair seeds with A from the others
//! (who reveal for the set that excludes it): together they unmask A's delta. An honest
//! validator acknowledges one selection per round, the first well-formed one it sees. Two
//! quorums share at least f + 1 validators, so while at most f are faulty two different
//! selections cannot both be acknowledged by a quorum, and every honest reveal and share of a
//! round names the one selection a quorum acknowledged. The price is one more gossip hop per
//! round before the reveals; a selection split between members voids the round (as withheld
//! reveals already can).

use std::collections::BTreeMap;

use consensus::{ValidatorId, ValidatorSet};

use super::Millis;
use crate::wire::secagg::SignedSelection;

/// One round's selections and acknowledgements. Bounded by the validator set: one selection
/// and one acknowledgement kept per signer.
#[derive(Default)]
pub struct Agreement {
    /// The first selection held from each signer, its digest (computed once), and when it
    /// arrived.
    held: BTreeMap<[u8; 32], (SignedSelection, [u8; 32], Millis)>,
    /// The selection this node acknowledged (the first well-formed one it saw), and when.
    first: Option<([u8; 32], Millis)>,
    /// Each signer's first acknowledgement: the selection digest it names.
    acks: BTreeMap<[u8; 32], [u8; 32]>,
    /// The selection a quorum acknowledged, and when this node learned it.
    agreed: Option<([u8; 32], Millis)>,
}

impl Agreement {
    /// A verified, well-formed selection; false when its signer's selection is already held.
    pub fn offer(&mut self, sel: SignedSelection, now: Millis) -> bool {
        let signer = sel.body.proposer;
        if self.held.contains_key(&signer) {
            return false;
        }
        let digest = sel.body.digest();
        self.held.insert(signer, (sel, digest, now));
        true
    }

    /// The selection to acknowledge, while none is: the earliest held.
    pub fn unacknowledged(&self) -> Option<[u8; 32]> {
        if self.first.is_some() {
            return None;
        }
        self.held
            .values()
            .min_by_key(|(_, _, at)| *at)
            .map(|(_, d, _)| *d)
    }

    /// Fixes `digest` as this node's one selection of the round (acknowledged, when it is a
    /// validator: see [`Agreement::ack`]); false when another one already is.
    pub fn choose(&mut self, digest: [u8; 32], now: Millis) -> bool {
        match self.first {
            None => {
                self.first = Some((digest, now));
                true
            }
            Some((d, _)) => d == digest,
        }
    }

    /// Whether this node chose a selection (its body may not be held yet, after a restart).
    pub fn chosen(&self) -> bool {
        self.first.is_some()
    }

    /// Our own acknowledgement of `digest`, recovered after a restart (the selection's body
    /// comes again from the network).
    pub fn restore(&mut self, me: [u8; 32], digest: [u8; 32]) {
        self.first = Some((digest, 0));
        self.acks.insert(me, digest);
    }

    /// A verified acknowledgement; false when the signer already acknowledged one.
    pub fn ack(&mut self, signer: [u8; 32], digest: [u8; 32]) -> bool {
        if self.acks.contains_key(&signer) {
            return false;
        }
        self.acks.insert(signer, digest);
        true
    }

    /// Fixes the agreed selection once a quorum of `set` acknowledged one that is held.
    pub fn settle(&mut self, set: &ValidatorSet, now: Millis) {
        if self.agreed.is_some() {
            return;
        }
        let mut count: BTreeMap<[u8; 32], usize> = BTreeMap::new();
        for (signer, digest) in &self.acks {
            if set.contains(&ValidatorId(*signer)) {
                *count.entry(*digest).or_default() += 1;
            }
        }
        self.agreed = count
            .into_iter()
            .find(|(d, c)| *c >= set.quorum() && self.by_digest(d).is_some())
            .map(|(d, _)| (d, now));
    }

    /// The held selection with this digest.
    pub fn by_digest(&self, digest: &[u8; 32]) -> Option<&SignedSelection> {
        self.held
            .values()
            .find(|(_, d, _)| d == digest)
            .map(|(s, _, _)| s)
    }

    /// The selection a quorum acknowledged, and when this node learned it.
    pub fn agreed(&self) -> Option<(&SignedSelection, Millis)> {
        let (d, at) = self.agreed.as_ref()?;
        Some((self.by_digest(d)?, *at))
    }

    /// The selection this node acknowledged, and when it saw it.
    pub fn first(&self) -> Option<(&SignedSelection, Millis)> {
        let (d, at) = self.first.as_ref()?;
        Some((self.by_digest(d)?, *at))
    }
}
