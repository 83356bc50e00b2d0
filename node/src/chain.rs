//! Following the chain of commits from genesis: each certificate is checked against the
//! validator set of its height (changes committed at `h` take effect at `h + 2`), and each value
//! must start from the previous round's model and name the previous commit.

use anyhow::{Result, bail};
use consensus::{Height, MembershipChange, ValidatorId, ValidatorSchedule, ValidatorSet, Value};

use crate::genesis::Genesis;
use crate::keys::hex;
use crate::wire::{LedgerEntry, RoundValue};

/// Where a verified chain ends.
#[derive(Clone)]
pub struct Chain {
    /// Validator sets by height.
    pub schedule: ValidatorSchedule,
    /// Last verified height (0 = genesis).
    pub height: u64,
    /// Id of the last verified value (zeros at genesis).
    pub last_value: [u8; 32],
    /// Model hash after the last verified height.
    pub model_hash: [u8; 32],
    /// Membership history: when each current validator started voting, when keys were removed.
    pub tenure: Tenure,
    genesis_set: ValidatorSet,
    /// The `open` policy: joins admit contributors.
    contributors_first: bool,
    /// The downtime window W.
    window: u64,
}

/// When each validator of the latest set started voting (0: genesis) and the last round each
/// removed key was removed at. Grows with membership changes, not rounds; every node derives it
/// from the entries that changed the set, which every snapshot carries.
#[derive(Clone, Debug, Default)]
pub struct Tenure {
    /// Validator -> first height it votes at.
    pub since: std::collections::BTreeMap<[u8; 32], u64>,
    /// Key -> the round whose value removed it.
    pub removed: std::collections::BTreeMap<[u8; 32], u64>,
    /// Under `open`: contributor -> the round whose value admitted it. A contributor is
    /// forgotten when promoted, removed, or [`contributor_tenure`] rounds after its admission.
    pub contributors: std::collections::BTreeMap<[u8; 32], u64>,
}

impl Tenure {
    fn record(&mut self, height: u64, rv: &RoundValue, contributors_first: bool, window: u64) {
        for r in &rv.removals {
            self.since.remove(r);
            self.contributors.remove(r);
            self.removed.insert(*r, height);
        }
        for j in &rv.joins {
            if contributors_first {
                self.contributors.insert(j.validator, height);
            } else {
                self.since.insert(j.validator, height + 2);
            }
        }
        for p in &rv.promotions {
            self.contributors.remove(p);
            self.since.insert(*p, height + 2);
        }
        let tenure = contributor_tenure(window);
        self.contributors.retain(|_, s| *s + tenure > height);
    }
}

/// How many rounds a contributor stays one without promotion: W, but at least a join request's
/// lifetime, so that its own request has expired (and cannot be replayed) when it is forgotten.
pub fn contributor_tenure(window: u64) -> u64 {
    window.max(crate::protocol::round::JOIN_TTL)
}

/// The changes to the validator set a value carries: removals of validators, then joins
/// (under `approve`) and promotions (under `open`). Contributors are not validators: their
/// admission and removal change no set.
pub fn changes(
    rv: &RoundValue,
    tenure: &Tenure,
    contributors_first: bool,
) -> Vec<MembershipChange> {
    let joins = rv
        .joins
        .iter()
        .filter(|_| !contributors_first)
        .map(|j| j.validator);
    rv.removals
        .iter()
        .filter(|v| !tenure.contributors.contains_key(*v))
        .map(|v| MembershipChange::Remove(ValidatorId(*v)))
        .chain(
            joins
                .chain(rv.promotions.iter().copied())
                .map(|v| MembershipChange::Add(ValidatorId(v))),
        )
        .collect()
}

impl Chain {
    /// The chain at genesis.
    pub fn new(genesis: &Genesis) -> Chain {
        Chain {
            schedule: ValidatorSchedule::new(Height(1), genesis.validators.clone()),
            height: 0,
            last_value: [0; 32],
            model_hash: model::params::hash_params(&genesis.initial_params()),
            tenure: Tenure {
                since: genesis
                    .validators
                    .members()
                    .iter()
                    .map(|v| (v.0, 0))
                    .collect(),
                removed: Default::default(),
                contributors: Default::default(),
            },
            genesis_set: genesis.validators.clone(),
            contributors_first: genesis.file.membership.contributors_first(),
            window: genesis.file.membership.downtime_window,
        }
    }

    /// The validator-set changes `rv` makes on this chain.
    pub fn changes(&self, rv: &RoundValue) -> Vec<MembershipChange> {
        changes(rv, &self.tenure, self.contributors_first)
    }

    /// Whether `key` is a contributor whose deltas a value for height `h` may include:
    /// admitted before `h`, within its tenure ([`contributor_tenure`]).
    pub fn is_contributor(&self, key: &[u8; 32], h: u64) -> bool {
        let tenure = contributor_tenure(self.window);
        self.tenure
            .contributors
            .get(key)
            .is_some_and(|s| *s < h && *s + tenure >= h)
    }

    /// The validator set of `height` (known up to two heights past the chain's end).
    pub fn set_for(&self, height: u64) -> &ValidatorSet {
        self.schedule
            .set_for(Height(height))
            .or_else(|| self.schedule.set_for(Height(self.height + 1)))
            .unwrap_or(&self.genesis_set)
    }

    /// Verifies `e` and advances: the next entry in order, or one further ahead (a state sync's
    /// jump), which is verified against the latest known validator set. A jump is sound only if no
    /// membership change was committed in the gap: a snapshot carries every entry that changed the
    /// set, so the gap holds none, and an omitted change makes the certificate fail to verify.
    pub fn follow(&mut self, e: &LedgerEntry, genesis: &Genesis) -> Result<RoundValue> {
        if e.height <= self.height {
            bail!(
                "entry for height {}, the chain is already at {}",
                e.height,
                self.height
            );
        }
        if e.height == self.height + 1 {
            return self.apply(e, genesis);
        }
        let set = self.set_for(self.height + 2).clone();
        let rv = e.verify(&genesis.chain_id, &set)?;
        if rv.included.len() < set.quorum() && !void(genesis, &rv) {
            bail!(
                "round {} includes {} deltas, fewer than a quorum",
                e.height,
                rv.included.len()
            );
        }
        self.schedule = ValidatorSchedule::new(Height(e.height), set);
        self.schedule
            .record_decided(Height(e.height), &self.changes(&rv))
            .map_err(|err| anyhow::anyhow!("membership change in round {}: {err}", e.height))?;
        self.tenure
            .record(e.height, &rv, self.contributors_first, self.window);
        self.height = e.height;
        self.last_value = Value(e.value.clone()).id().0;
        self.model_hash = rv.model_hash;
        Ok(rv)
    }

    /// Verifies the next entry and advances.
    pub fn apply(&mut self, e: &LedgerEntry, genesis: &Genesis) -> Result<RoundValue> {
        let h = self.height + 1;
        if e.height != h {
            bail!("entry for height {}, expected {h}", e.height);
        }
        let set = self.set_for(h).clone();
        let rv = e.verify(&genesis.chain_id, &set)?;
        if rv.base_hash != self.model_hash {
            bail!(
                "round {h} starts from {}, but round {} ended at {}",
                hex(&rv.base_hash),
                h - 1,
                hex(&self.model_hash)
            );
        }
        if rv.prev_value != self.last_value {
            bail!("round {h} does not link to the previous commit");
        }
        if rv.included.len() < set.quorum() && !void(genesis, &rv) {
            bail!(
                "round {h} includes {} deltas, fewer than a quorum",
                rv.included.len()
            );
        }
        self.schedule
            .record_decided(Height(h), &self.changes(&rv))
            .map_err(|e| anyhow::anyhow!("membership change in round {h}: {e}"))?;
        self.schedule.prune_below(Height(h.saturating_sub(4)));
        self.tenure
            .record(h, &rv, self.contributors_first, self.window);
        self.height = h;
        self.last_value = Value(e.value.clone()).id().0;
        self.model_hash = rv.model_hash;
        Ok(rv)
    }
}

/// A void round of secure aggregation (no reveals: the model stays as it was), which may include
/// fewer than a quorum of deltas (`protocol::secure`).
fn void(genesis: &Genesis, rv: &RoundValue) -> bool {
    genesis.privacy.secure.is_some() && rv.aggregation.reveals.is_empty()
}
