//! What this node has released under record-level DP-SGD, and its budget.
//!
//! Every delta this node signs under the genesis `[privacy] dp_sgd` is one release: `steps`
//! compositions of the sampled Gaussian mechanism (rate `q`, noise multiplier `sigma`, per-example
//! clipping `C`; add/remove-one-record adjacency over this node's own records). A delta that was
//! published counts whether or not a round included it: every peer received it. The count is
//! written to the store before the delta leaves (`Action::WriteReleases`), so a crash or restart
//! never forgets a release. Epsilon is the RDP accountant's at the genesis `delta`
//! ([`model::dp::Accountant`]). Once one more release would exceed `epsilon_budget`, the node
//! trains no more and follows the chain as an observer.

use model::dp::Accountant;

use crate::genesis::Genesis;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct PrivacyAccount {
    /// Accountant and compositions per release, when DP-SGD adds noise.
    mechanism: Option<(Accountant, u64)>,
    delta: f64,
    budget: Option<f64>,
    /// Deltas released so far (durable).
    releases: u64,
    /// Whether the budget stopped this node (said once).
    exhausted: bool,
}

impl PrivacyAccount {
    /// The account of a node of `genesis` that has released `releases` deltas.
    pub fn new(genesis: &Genesis, releases: u64) -> PrivacyAccount {
        let p = genesis.privacy;
        let mechanism = p.dp_sgd.filter(|c| c.noise > 0.0).map(|c| {
            let acc = Accountant {
                noise: c.noise,
                sampling_rate: c.rate,
            };
            (acc, c.steps(genesis.train.work) as u64)
        });
        PrivacyAccount {
            mechanism,
            delta: p.delta,
            budget: p.budget,
            releases,
            exhausted: false,
        }
    }

    /// Epsilon after `releases` releases; `None` without DP-SGD noise (no guarantee at all).
    fn epsilon_after(&self, releases: u64) -> Option<f64> {
        let (acc, steps) = self.mechanism?;
        Some(acc.epsilon(releases.saturating_mul(steps), self.delta).0)
    }

    /// Epsilon spent so far at the genesis delta.
    pub fn epsilon(&self) -> Option<f64> {
        self.epsilon_after(self.releases)
    }

    /// Whether one more release stays within the budget. The first time it does not, logs why
    /// the node stops contributing.
    pub fn may_release(&mut self) -> bool {
        let (Some(budget), Some(next)) = (self.budget, self.epsilon_after(self.releases + 1))
        else {
            return true;
        };
        if next <= budget {
            return true;
        }
        if !self.exhausted {
            self.exhausted = true;
            tracing::warn!(
                spent = self.epsilon().unwrap_or(0.0),
                next,
                budget,
                releases = self.releases,
                "privacy budget: one more delta would exceed epsilon_budget; this node stops \
                 contributing and follows the chain as an observer"
            );
        }
        false
    }

    /// Counts one release; returns the new count, to be stored before the delta leaves.
    pub fn record_release(&mut self) -> u64 {
        self.releases += 1;
        self.releases
    }
}
