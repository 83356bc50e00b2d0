//! Validator sets with equal voting power, proposer rotation and the per-height schedule
//! of membership changes (PROTOCOL.md sections 1 and 7).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::types::{Height, ValidatorId, View};

/// Most validators one set may hold (bounds certificate sizes).
pub const MAX_VALIDATORS: usize = 1024;

/// A sorted, duplicate-free list of validators with equal voting power.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidatorSet {
    members: Vec<ValidatorId>,
}

impl ValidatorSet {
    /// A set from any order of keys; sorts and rejects duplicates, an empty set and more
    /// than [`MAX_VALIDATORS`].
    pub fn new(mut members: Vec<ValidatorId>) -> Result<Self, Error> {
        members.sort();
        let before = members.len();
        members.dedup();
        if members.len() != before {
            return Err(Error::InvalidValidatorSet {
                reason: "duplicate validator",
            });
        }
        if members.is_empty() {
            return Err(Error::InvalidValidatorSet {
                reason: "empty validator set",
            });
        }
        if members.len() > MAX_VALIDATORS {
            return Err(Error::InvalidValidatorSet {
                reason: "more than MAX_VALIDATORS validators",
            });
        }
        Ok(ValidatorSet { members })
    }

    /// Number of validators `n`.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Never true (constructors reject empty sets); present for clippy's `len` convention.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Tolerated Byzantine validators `f = floor((n - 1) / 3)`.
    pub fn max_faulty(&self) -> usize {
        (self.len() - 1) / 3
    }

    /// Quorum "2f + 1": more than two thirds of the validators, `floor(2n / 3) + 1`.
    pub fn quorum(&self) -> usize {
        self.len() * 2 / 3 + 1
    }

    /// "f + 1": more than one third of the validators, `floor(n / 3) + 1`.
    pub fn one_third_plus(&self) -> usize {
        self.len() / 3 + 1
    }

    /// True when `id` is a member.
    pub fn contains(&self, id: &ValidatorId) -> bool {
        self.members.binary_search(id).is_ok()
    }

    /// The members in sorted order.
    pub fn members(&self) -> &[ValidatorId] {
        &self.members
    }

    /// `proposer(h, v) = members[(h + v) mod n]`.
    pub fn proposer(&self, height: Height, view: View) -> ValidatorId {
        let n = self.members.len() as u64;
        let index = (height.0 % n + u64::from(view.0) % n) % n;
        self.members[index as usize]
    }

    /// The rotation over the members not in `skip`: `eligible[(h + v) mod |eligible|]`. When
    /// `skip` leaves no member, the plain rotation.
    pub fn proposer_skipping(
        &self,
        height: Height,
        view: View,
        skip: &[ValidatorId],
    ) -> ValidatorId {
        if skip.is_empty() {
            return self.proposer(height, view);
        }
        let eligible: Vec<ValidatorId> = self
            .members
            .iter()
            .filter(|m| !skip.contains(m))
            .copied()
            .collect();
        if eligible.is_empty() {
            return self.proposer(height, view);
        }
        let n = eligible.len() as u64;
        let index = (height.0 % n + u64::from(view.0) % n) % n;
        eligible[index as usize]
    }

    /// `SHA-256("cohort/validator-set/v1" | keys in order)`, for the node to put into values.
    pub fn hash(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(b"cohort/validator-set/v1");
        for member in &self.members {
            hasher.update(member.0);
        }
        hasher.finalize().into()
    }

    /// The set after applying `changes` in order (adding a member twice or removing a
    /// non-member is an error, as is emptying the set).
    pub fn apply_changes(&self, changes: &[MembershipChange]) -> Result<ValidatorSet, Error> {
        let mut members = self.members.clone();
        for change in changes {
            match change {
                MembershipChange::Add(id) => match members.binary_search(id) {
                    Ok(_) => {
                        return Err(Error::InvalidValidatorSet {
                            reason: "added validator already a member",
                        });
                    }
                    Err(pos) => members.insert(pos, *id),
                },
                MembershipChange::Remove(id) => match members.binary_search(id) {
                    Ok(pos) => {
                        members.remove(pos);
                    }
                    Err(_) => {
                        return Err(Error::InvalidValidatorSet {
                            reason: "removed validator not a member",
                        });
                    }
                },
            }
        }
        ValidatorSet::new(members)
    }
}

/// One membership change carried in a committed value (the node decodes it from the value).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Adds a validator.
    Add(ValidatorId),
    /// Removes a validator.
    Remove(ValidatorId),
}

/// Validator sets per height: a change committed at height `h` takes effect at `h + 2`.
#[derive(Clone, Debug)]
pub struct ValidatorSchedule {
    sets: BTreeMap<Height, ValidatorSet>,
}

impl ValidatorSchedule {
    /// Starts at `first` with `genesis` for heights `first` and `first + 1`.
    pub fn new(first: Height, genesis: ValidatorSet) -> Self {
        let mut sets = BTreeMap::new();
        sets.insert(Height(first.0.saturating_add(1)), genesis.clone());
        sets.insert(first, genesis);
        ValidatorSchedule { sets }
    }

    /// The set that runs height `height`, when known.
    pub fn set_for(&self, height: Height) -> Option<&ValidatorSet> {
        self.sets.get(&height)
    }

    /// Records that `height` decided a value carrying `changes`: fixes the set of
    /// `height + 2` as the set of `height + 1` with the changes applied. Returns that set.
    pub fn record_decided(
        &mut self,
        height: Height,
        changes: &[MembershipChange],
    ) -> Result<&ValidatorSet, Error> {
        let next = Height(height.0.saturating_add(1));
        let target = Height(height.0.saturating_add(2));
        let base = self
            .sets
            .get(&next)
            .ok_or(Error::UnknownValidatorSet { height: next })?;
        let set = base.apply_changes(changes)?;
        Ok(self.sets.entry(target).or_insert(set))
    }

    /// Forgets the sets of heights below `height`.
    pub fn prune_below(&mut self, height: Height) {
        self.sets = self.sets.split_off(&height);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> ValidatorId {
        ValidatorId([b; 32])
    }

    #[test]
    fn proposer_rotation_skips_the_listed_validators() {
        let set = ValidatorSet::new(vec![id(1), id(2), id(3), id(4)]).unwrap();
        for h in 0..20 {
            for v in 0..5 {
                assert_eq!(
                    set.proposer_skipping(Height(h), View(v), &[]),
                    set.proposer(Height(h), View(v))
                );
                let p = set.proposer_skipping(Height(h), View(v), &[id(2)]);
                assert_ne!(p, id(2));
            }
        }
        // Each remaining member gets its turn.
        let turns: std::collections::BTreeSet<_> = (0..3)
            .map(|h| set.proposer_skipping(Height(h), View(0), &[id(2)]))
            .collect();
        assert_eq!(turns.len(), 3);
        let all = [id(1), id(2), id(3), id(4)];
        assert_eq!(
            set.proposer_skipping(Height(5), View(1), &all),
            set.proposer(Height(5), View(1))
        );
    }

    #[test]
    fn thresholds_table() {
        // (n, f, quorum, one_third_plus)
        let table = [
            (1, 0, 1, 1),
            (3, 0, 3, 2),
            (4, 1, 3, 2),
            (6, 1, 5, 3),
            (7, 2, 5, 3),
            (10, 3, 7, 4),
            (31, 10, 21, 11),
            (100, 33, 67, 34),
        ];
        for (n, f, q, t) in table {
            let set = ValidatorSet::new((0..n).map(|i| id(i as u8)).collect()).unwrap();
            assert_eq!(set.max_faulty(), f, "f for n={n}");
            assert_eq!(set.quorum(), q, "quorum for n={n}");
            assert_eq!(set.one_third_plus(), t, "f+1 for n={n}");
            // Two quorums intersect in more than f validators.
            assert!(2 * q > n + f, "intersection for n={n}");
        }
    }

    #[test]
    fn proposer_rotates_over_sorted_members() {
        let set = ValidatorSet::new(vec![id(3), id(1), id(2)]).unwrap();
        assert_eq!(set.proposer(Height(0), View(0)), id(1));
        assert_eq!(set.proposer(Height(0), View(1)), id(2));
        assert_eq!(set.proposer(Height(1), View(2)), id(1));
        // (2^64 - 1) mod 3 = 0 and (2^32 - 1) mod 3 = 0: no overflow, index 0.
        assert_eq!(set.proposer(Height(u64::MAX), View(u32::MAX)), id(1));
    }

    #[test]
    fn rejects_bad_sets() {
        assert!(ValidatorSet::new(vec![]).is_err());
        assert!(ValidatorSet::new(vec![id(1), id(1)]).is_err());
        let set = ValidatorSet::new(vec![id(1)]).unwrap();
        assert!(set.apply_changes(&[MembershipChange::Add(id(1))]).is_err());
        assert!(
            set.apply_changes(&[MembershipChange::Remove(id(2))])
                .is_err()
        );
        assert!(
            set.apply_changes(&[MembershipChange::Remove(id(1))])
                .is_err()
        );
    }

    #[test]
    fn changes_take_effect_two_heights_later() {
        let genesis = ValidatorSet::new(vec![id(1), id(2), id(3), id(4)]).unwrap();
        let mut schedule = ValidatorSchedule::new(Height(10), genesis.clone());
        assert_eq!(schedule.set_for(Height(10)), Some(&genesis));
        assert_eq!(schedule.set_for(Height(11)), Some(&genesis));
        assert_eq!(schedule.set_for(Height(12)), None);
        let changes = [
            MembershipChange::Add(id(5)),
            MembershipChange::Remove(id(1)),
        ];
        schedule.record_decided(Height(10), &changes).unwrap();
        // Height 11 is unaffected, 12 has the change.
        assert_eq!(schedule.set_for(Height(11)), Some(&genesis));
        let s12 = schedule.set_for(Height(12)).unwrap();
        assert_eq!(s12.members(), &[id(2), id(3), id(4), id(5)]);
        let s12 = s12.clone();
        schedule.record_decided(Height(11), &[]).unwrap();
        assert_eq!(schedule.set_for(Height(13)), Some(&s12));
        schedule.prune_below(Height(12));
        assert_eq!(schedule.set_for(Height(11)), None);
        assert!(schedule.set_for(Height(12)).is_some());
        // Deciding a height whose successor's set is unknown is an error.
        assert!(schedule.record_decided(Height(20), &[]).is_err());
        assert_ne!(genesis.hash(), s12.hash());
    }
}
