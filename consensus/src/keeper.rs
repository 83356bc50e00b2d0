//! The vote keeper: stores and counts votes per (view, kind), rejects non-members and
//! duplicates, turns conflicting votes into evidence, and tracks which validators sent
//! anything per view for the view-skip rule (PROTOCOL.md section 4).

use std::collections::{BTreeMap, BTreeSet};

use crate::certificate::{Certificate, Evidence};
use crate::error::Error;
use crate::types::{Height, SignedVote, ValidatorId, ValueId, View, VoteKind};
use crate::validators::ValidatorSet;

/// What adding a vote did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VoteOutcome {
    /// Counted.
    Added,
    /// A second, different vote by the same validator for the same step. It is also
    /// counted for its own value (up to [`MAX_VALUES_PER_VALIDATOR_STEP`] values, and beyond
    /// that for values that already have one-third-plus voters), so a quorum for a value
    /// means that many distinct validators signed for it (a quorum seen by one node can then
    /// be shown to every other node), and returned as evidence.
    Equivocation(Evidence),
}

/// Distinct values one validator's votes are counted for in one (view, kind): the first
/// vote and a few conflicting ones (memory bound against Byzantine spam). A vote for a value
/// that already has votes of one-third-plus distinct validators (so of an honest one) is
/// counted beyond this cap: otherwise an equivocator that filled its slots at one node with
/// values nobody else voted for keeps its real vote out of a polka that node needs (the
/// liveness failure of soak seed 59186, PROTOCOL.md section 4). Such values number at most
/// the honest validators, so memory stays bounded.
pub const MAX_VALUES_PER_VALIDATOR_STEP: usize = 3;

/// Votes of one kind in one view.
#[derive(Clone, Debug, Default)]
struct Tally {
    /// The first vote of each validator (evidence, totals).
    first: BTreeMap<ValidatorId, SignedVote>,
    /// Every counted vote per value id (`None` = nil), by validator.
    by_value: BTreeMap<Option<ValueId>, BTreeMap<ValidatorId, SignedVote>>,
    /// How many values each validator's votes are counted for.
    values_per_validator: BTreeMap<ValidatorId, usize>,
}

impl Tally {
    fn count(&self, value: Option<ValueId>) -> usize {
        self.by_value.get(&value).map_or(0, BTreeMap::len)
    }
}

/// Everything received for one view.
#[derive(Clone, Debug, Default)]
struct ViewVotes {
    prevotes: Tally,
    precommits: Tally,
    /// Distinct validators with any message (vote or proposal) in this view (line 55).
    senders: BTreeSet<ValidatorId>,
}

/// Vote keeper of one height.
#[derive(Clone, Debug)]
pub struct VoteKeeper {
    height: Height,
    set: ValidatorSet,
    views: BTreeMap<View, ViewVotes>,
}

impl VoteKeeper {
    /// An empty keeper for `height` with its validator set.
    pub fn new(height: Height, set: ValidatorSet) -> Self {
        VoteKeeper {
            height,
            set,
            views: BTreeMap::new(),
        }
    }

    /// The validator set counted against.
    pub fn validator_set(&self) -> &ValidatorSet {
        &self.set
    }

    fn tally(&self, view: View, kind: VoteKind) -> Option<&Tally> {
        self.views.get(&view).map(|v| match kind {
            VoteKind::Prevote => &v.prevotes,
            VoteKind::Precommit => &v.precommits,
        })
    }

    /// True when exactly this signed vote is stored already (cheap check before verifying).
    pub fn contains(&self, vote: &SignedVote) -> bool {
        self.tally(vote.vote.view, vote.vote.kind)
            .and_then(|t| t.by_value.get(&vote.vote.value))
            .and_then(|votes| votes.get(&vote.vote.validator))
            .is_some_and(|stored| stored == vote)
    }

    /// Adds a vote whose signature the caller has verified. Rejects other heights,
    /// non-members and exact duplicates; a conflicting second vote becomes evidence.
    pub fn add(&mut self, vote: SignedVote) -> Result<VoteOutcome, Error> {
        let v = vote.vote;
        if v.height != self.height {
            return Err(if v.height > self.height {
                Error::FutureHeight {
                    got: v.height,
                    expected: self.height,
                }
            } else {
                Error::PastHeight {
                    got: v.height,
                    expected: self.height,
                }
            });
        }
        if !self.set.contains(&v.validator) {
            return Err(Error::UnknownValidator {
                validator: v.validator,
                height: v.height,
            });
        }
        let entry = self.views.entry(v.view).or_default();
        let tally = match v.kind {
            VoteKind::Prevote => &mut entry.prevotes,
            VoteKind::Precommit => &mut entry.precommits,
        };
        if tally
            .by_value
            .get(&v.value)
            .is_some_and(|votes| votes.contains_key(&v.validator))
        {
            // This validator's vote for this value is counted already (an identical vote,
            // or the same vote with other signature bytes under a malleable scheme).
            return Err(Error::Duplicate);
        }
        let outcome = match tally.first.get(&v.validator) {
            None => {
                tally.first.insert(v.validator, vote);
                VoteOutcome::Added
            }
            Some(first) => VoteOutcome::Equivocation(Evidence::ConflictingVotes {
                first: Box::new(*first),
                second: Box::new(vote),
            }),
        };
        // The cap bounds the values nobody else voted for. A value that already has votes
        // of one-third-plus distinct validators has an honest voter, so it is not spam: a
        // Byzantine validator that filled its slots here with such values must not keep its
        // vote out of a quorum other nodes count (line 28 needs the polka of `vr` at every
        // honest node; with exactly a quorum of honest validators it includes that vote).
        let supported = tally.count(v.value) >= self.set.one_third_plus();
        let counted = tally.values_per_validator.entry(v.validator).or_insert(0);
        if *counted < MAX_VALUES_PER_VALIDATOR_STEP || supported {
            *counted += 1;
            tally
                .by_value
                .entry(v.value)
                .or_default()
                .insert(v.validator, vote);
        }
        entry.senders.insert(v.validator);
        Ok(outcome)
    }

    /// Notes that a member sent a proposal in `view` (counts for the view-skip rule).
    pub fn note_sender(&mut self, view: View, validator: ValidatorId) {
        if self.set.contains(&validator) {
            self.views
                .entry(view)
                .or_default()
                .senders
                .insert(validator);
        }
    }

    /// Votes of `kind` in `view` for `value` (`None` = nil).
    pub fn count(&self, view: View, kind: VoteKind, value: Option<ValueId>) -> usize {
        self.tally(view, kind).map_or(0, |t| t.count(value))
    }

    /// All votes of `kind` in `view`.
    pub fn total(&self, view: View, kind: VoteKind) -> usize {
        self.tally(view, kind).map_or(0, |t| t.first.len())
    }

    /// The value (not nil) with a quorum of `kind` votes in `view`, if any. Two values can
    /// only both have a quorum if more than f validators equivocate; then the smallest id is
    /// returned.
    pub fn quorum_value(&self, view: View, kind: VoteKind) -> Option<ValueId> {
        let quorum = self.set.quorum();
        self.tally(view, kind)?
            .by_value
            .iter()
            .find_map(|(value, votes)| (votes.len() >= quorum).then_some(*value).flatten())
    }

    /// True when nil has a quorum of `kind` votes in `view`.
    pub fn nil_quorum(&self, view: View, kind: VoteKind) -> bool {
        self.count(view, kind, None) >= self.set.quorum()
    }

    /// True when `kind` votes of any value in `view` reach a quorum.
    pub fn any_quorum(&self, view: View, kind: VoteKind) -> bool {
        self.total(view, kind) >= self.set.quorum()
    }

    /// True when no value can reach a quorum of `kind` votes in `view` any more: the value with
    /// the most counted votes falls short of a quorum even if every validator not heard from
    /// in this step votes for it (PROTOCOL.md 3.12). An equivocator's later vote for a value
    /// can still count (section 4), so this is a liveness judgement, never a safety one.
    pub fn value_quorum_out_of_reach(&self, view: View, kind: VoteKind) -> bool {
        let Some(t) = self.tally(view, kind) else {
            return false;
        };
        let unheard = self.set.len().saturating_sub(t.first.len());
        let best = t
            .by_value
            .iter()
            .filter(|(value, _)| value.is_some())
            .map(|(_, votes)| votes.len())
            .max()
            .unwrap_or(0);
        best + unheard < self.set.quorum()
    }

    /// The highest view above `above` from which more than a third of the validators sent
    /// something (line 55).
    pub fn skip_view(&self, above: View) -> Option<View> {
        let threshold = self.set.one_third_plus();
        self.views
            .range(above.next()..)
            .rev()
            .find(|(_, v)| v.senders.len() >= threshold)
            .map(|(view, _)| *view)
    }

    /// Views with a precommit quorum for some value, lowest first (line 49).
    pub fn decided_candidates(&self) -> Vec<(View, ValueId)> {
        self.views
            .keys()
            .filter_map(|view| {
                self.quorum_value(*view, VoteKind::Precommit)
                    .map(|id| (*view, id))
            })
            .collect()
    }

    /// The stored votes of `kind` in `view` for `value`, in validator order.
    pub fn votes_for(&self, view: View, kind: VoteKind, value: Option<ValueId>) -> Vec<SignedVote> {
        self.tally(view, kind)
            .and_then(|t| t.by_value.get(&value))
            .map(|votes| votes.values().copied().collect())
            .unwrap_or_default()
    }

    /// The certificate for `value` in `view` from the stored precommits.
    pub fn certificate(&self, view: View, value: ValueId) -> Certificate {
        let votes = self.votes_for(view, VoteKind::Precommit, Some(value));
        Certificate::from_precommits(self.height, view, value, &votes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::InsecureTestSigner;
    use crate::types::{ChainId, Vote};

    fn id(b: u8) -> ValidatorId {
        ValidatorId([b; 32])
    }

    fn vote(who: u8, view: u32, kind: VoteKind, value: Option<u8>) -> SignedVote {
        let chain = ChainId::new("t").unwrap();
        Vote {
            height: Height(1),
            view: View(view),
            kind,
            value: value.map(|b| ValueId([b; 32])),
            validator: id(who),
        }
        .sign(&chain, &InsecureTestSigner::new(id(who)))
    }

    fn keeper() -> VoteKeeper {
        VoteKeeper::new(
            Height(1),
            ValidatorSet::new((1..=4).map(id).collect()).unwrap(),
        )
    }

    #[test]
    fn table_of_additions() {
        use VoteKind::*;
        // (vote to add, expected result, prevote count for value 9 in view 0 afterwards)
        enum Want {
            Added,
            Dup,
            Evidence,
            NotMember,
            OtherHeight,
        }
        let mut k = keeper();
        let mut other_height = vote(1, 0, Prevote, Some(9));
        other_height.vote.height = Height(2);
        let table: Vec<(SignedVote, Want, usize)> = vec![
            (vote(1, 0, Prevote, Some(9)), Want::Added, 1),
            (vote(1, 0, Prevote, Some(9)), Want::Dup, 1),
            (vote(1, 0, Prevote, None), Want::Evidence, 1),
            (vote(1, 0, Precommit, None), Want::Added, 1),
            (vote(5, 0, Prevote, Some(9)), Want::NotMember, 1),
            (other_height, Want::OtherHeight, 1),
            (vote(2, 0, Prevote, Some(9)), Want::Added, 2),
            (vote(3, 0, Prevote, Some(9)), Want::Added, 3),
        ];
        for (i, (v, want, count)) in table.into_iter().enumerate() {
            let got = k.add(v);
            match want {
                Want::Added => assert_eq!(got, Ok(VoteOutcome::Added), "row {i}"),
                Want::Dup => assert_eq!(got, Err(Error::Duplicate), "row {i}"),
                Want::Evidence => {
                    assert!(matches!(got, Ok(VoteOutcome::Equivocation(_))), "row {i}")
                }
                Want::NotMember => {
                    assert!(
                        matches!(got, Err(Error::UnknownValidator { .. })),
                        "row {i}"
                    )
                }
                Want::OtherHeight => {
                    assert!(matches!(got, Err(Error::FutureHeight { .. })), "row {i}")
                }
            }
            assert_eq!(
                k.count(View(0), Prevote, Some(ValueId([9; 32]))),
                count,
                "row {i}"
            );
        }
        assert_eq!(k.quorum_value(View(0), Prevote), Some(ValueId([9; 32])));
        assert!(k.any_quorum(View(0), Prevote));
        assert!(!k.nil_quorum(View(0), Prevote));
        assert_eq!(k.quorum_value(View(0), Precommit), None);
    }

    /// Soak seed 59186 (n = 10): an equivocator filled its three slots at a node with values
    /// nobody else voted for, so its real prevote, which completed the view's polka at the
    /// other nodes, was dropped there and the re-proposal of that value never got a quorum.
    #[test]
    fn vote_for_a_supported_value_counts_beyond_the_cap() {
        use VoteKind::*;
        let set: Vec<ValidatorId> = (1..=10).map(id).collect();
        let mut k = VoteKeeper::new(Height(1), ValidatorSet::new(set).unwrap());
        assert_eq!(k.validator_set().quorum(), 7);
        // Validator 10 fills its slots with values nobody else votes for.
        for (i, garbage) in [0x6f, 0xb5, 0xea].into_iter().enumerate() {
            let got = k.add(vote(10, 1, Prevote, Some(garbage))).unwrap();
            assert_eq!(got == VoteOutcome::Added, i == 0);
        }
        // A fourth unsupported value is not counted (memory bound)...
        assert!(matches!(
            k.add(vote(10, 1, Prevote, Some(0x11))),
            Ok(VoteOutcome::Equivocation(_))
        ));
        assert_eq!(k.count(View(1), Prevote, Some(ValueId([0x11; 32]))), 0);
        // ... and neither is a vote for a value with fewer than one-third-plus (4) voters.
        for who in 1..=3 {
            k.add(vote(who, 1, Prevote, Some(9))).unwrap();
        }
        assert!(matches!(
            k.add(vote(10, 1, Prevote, Some(9))),
            Ok(VoteOutcome::Equivocation(_))
        ));
        assert_eq!(k.count(View(1), Prevote, Some(ValueId([9; 32]))), 3);
        // Six honest voters: the equivocator's vote for the value completes the polka.
        for who in 4..=6 {
            k.add(vote(who, 1, Prevote, Some(9))).unwrap();
        }
        assert_eq!(k.quorum_value(View(1), Prevote), None);
        assert!(matches!(
            k.add(vote(10, 1, Prevote, Some(9))),
            Ok(VoteOutcome::Equivocation(_))
        ));
        assert_eq!(k.count(View(1), Prevote, Some(ValueId([9; 32]))), 7);
        assert_eq!(k.quorum_value(View(1), Prevote), Some(ValueId([9; 32])));
        assert_eq!(
            k.votes_for(View(1), Prevote, Some(ValueId([9; 32]))).len(),
            7
        );
        // Counted once: the same vote again is a duplicate.
        assert_eq!(k.add(vote(10, 1, Prevote, Some(9))), Err(Error::Duplicate));
    }

    #[test]
    fn nil_and_any_quorums_and_skip() {
        use VoteKind::*;
        let mut k = keeper();
        k.add(vote(1, 2, Prevote, None)).unwrap();
        k.add(vote(2, 2, Prevote, None)).unwrap();
        assert!(!k.any_quorum(View(2), Prevote));
        // f + 1 = 2 senders in view 2: skip from view 0 or 1, not from 2.
        assert_eq!(k.skip_view(View(0)), Some(View(2)));
        assert_eq!(k.skip_view(View(2)), None);
        k.add(vote(3, 2, Prevote, Some(7))).unwrap();
        assert!(k.any_quorum(View(2), Prevote));
        assert!(!k.nil_quorum(View(2), Prevote));
        k.add(vote(4, 2, Prevote, None)).unwrap();
        assert!(k.nil_quorum(View(2), Prevote));
        assert_eq!(k.quorum_value(View(2), Prevote), None);
        // A proposal counts as a message for the skip rule.
        k.note_sender(View(5), id(1));
        assert_eq!(k.skip_view(View(2)), None);
        k.note_sender(View(5), id(2));
        assert_eq!(k.skip_view(View(2)), Some(View(5)));
    }

    #[test]
    fn certificate_from_precommit_quorum() {
        use VoteKind::*;
        let mut k = keeper();
        for who in [3, 1, 2] {
            k.add(vote(who, 1, Precommit, Some(4))).unwrap();
        }
        k.add(vote(4, 1, Precommit, None)).unwrap();
        assert_eq!(k.decided_candidates(), vec![(View(1), ValueId([4; 32]))]);
        let cert = k.certificate(View(1), ValueId([4; 32]));
        assert_eq!(cert.precommits.len(), 3);
        let chain = ChainId::new("t").unwrap();
        cert.verify(
            k.validator_set(),
            &chain,
            &crate::signing::InsecureTestVerifier,
        )
        .unwrap();
    }
}
