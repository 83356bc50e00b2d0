//! The genesis file: chain id, model and training configuration, round timeouts, the initial
//! seed and the first validator set. Every node of a network loads the same file.

use std::path::Path;

use anyhow::{Context, Result, bail};
use consensus::{ChainId, LinearTimeout, Timeouts, ValidatorId, ValidatorSet};
use model::aggregate::{Aggregator, ServerOpt};
use model::codec::Compression;
use model::data::DatasetKind;
use model::dp::DpConfig;
use model::dpsgd::DpSgdConfig;
use model::net::ModelKind;
use model::partition::Partition;
use model::train::{Optimizer, TrainConfig, Work};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::keys::{hex, parse_hex32};

/// The file as written (TOML); strings for the typed settings so the file stays readable.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisFile {
    /// Network name; part of every signature and topic.
    pub chain_id: String,
    /// Seed of the initial model (theta_0).
    pub seed: u64,
    /// Validators' ed25519 public keys (hex).
    pub validators: Vec<String>,
    /// Write a safetensors checkpoint every this many rounds.
    pub checkpoint_every: u64,
    /// Model and data.
    pub model: ModelSection,
    /// Local training and aggregation.
    pub training: TrainingSection,
    /// Consensus and round timers.
    pub timeouts: TimeoutSection,
    /// Who may vote, and when a validator is removed.
    #[serde(default)]
    pub membership: MembershipSection,
    /// Record-level differential privacy of local training.
    #[serde(default)]
    pub privacy: PrivacySection,
}

/// `[privacy]`: record-level DP-SGD (each party's records are protected, under add/remove-one
/// record adjacency) and the budget after which a node stops releasing deltas.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySection {
    /// `clip:C,noise:SIGMA,rate:Q` (per-example clipping, noise multiplier, Poisson sampling
    /// rate), or empty for none.
    #[serde(default)]
    pub dp_sgd: String,
    /// Largest epsilon (at `delta`) a node may spend; once one more round would exceed it, the
    /// node stops contributing and follows the chain as an observer. 0: no budget.
    #[serde(default)]
    pub epsilon_budget: f64,
    /// The delta of (epsilon, delta)-DP.
    #[serde(default = "default_delta")]
    pub delta: f64,
}

fn default_delta() -> f64 {
    1e-5
}

impl Default for PrivacySection {
    fn default() -> Self {
        PrivacySection {
            dp_sgd: String::new(),
            epsilon_budget: 0.0,
            delta: default_delta(),
        }
    }
}

/// The checked `[privacy]` section.
#[derive(Debug, Clone, Copy)]
pub struct Privacy {
    /// DP-SGD settings.
    pub dp_sgd: Option<DpSgdConfig>,
    /// Epsilon budget, if any.
    pub budget: Option<f64>,
    /// Delta.
    pub delta: f64,
}

impl PrivacySection {
    fn check(&self) -> Result<Privacy> {
        let dp_sgd = if self.dp_sgd.trim().is_empty() {
            None
        } else {
            let c: DpSgdConfig = self.dp_sgd.parse().context("privacy.dp_sgd")?;
            c.validate().context("privacy.dp_sgd")?;
            Some(c)
        };
        if !(self.delta > 0.0 && self.delta < 0.1) {
            bail!("privacy.delta must be in (0, 0.1), not {}", self.delta);
        }
        if !(self.epsilon_budget.is_finite() && self.epsilon_budget >= 0.0) {
            bail!("privacy.epsilon_budget must be a finite number >= 0");
        }
        let budget = (self.epsilon_budget > 0.0).then_some(self.epsilon_budget);
        if budget.is_some() && dp_sgd.is_none_or(|c| c.noise <= 0.0) {
            bail!("privacy.epsilon_budget needs privacy.dp_sgd with noise > 0");
        }
        Ok(Privacy {
            dp_sgd,
            budget,
            delta: self.delta,
        })
    }
}

/// `[membership]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipSection {
    /// Who may join: `closed` (the genesis set only: a consortium of known parties; removals
    /// still apply), `approve` (a join request is admitted once the operators of a quorum of
    /// the validators approved its key with `cohort approve`, within the admission bound) or
    /// `open` (a public network: a signed join request makes the key a contributor, whose
    /// deltas may be included within the robust rule's tolerance; a contributor included in
    /// `promote_after` of the last W rounds is promoted to validator, within the admission
    /// bound).
    #[serde(default = "default_policy")]
    pub policy: String,
    /// Downtime window W in rounds: a validator whose delta is missing from more than half of
    /// the last W committed rounds is removed; no more validators are admitted within any W
    /// rounds than the quorum can lose (f of the set after admission).
    pub downtime_window: u64,
    /// Under `open`: in how many of the last W committed rounds a contributor's delta must be
    /// included before it is promoted to validator (1..=W).
    #[serde(default = "default_promote_after")]
    pub promote_after: u64,
}

fn default_policy() -> String {
    "open".into()
}

fn default_promote_after() -> u64 {
    8
}

impl Default for MembershipSection {
    fn default() -> Self {
        MembershipSection {
            policy: default_policy(),
            downtime_window: 100,
            promote_after: default_promote_after(),
        }
    }
}

impl MembershipSection {
    /// Whether join requests can ever be admitted.
    pub fn admits(&self) -> bool {
        self.policy != "closed"
    }

    /// Whether joiners start as contributors (the `open` policy).
    pub fn contributors_first(&self) -> bool {
        self.policy == "open"
    }
}

/// `[model]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// mlp, cnn or digits-mlp.
    pub kind: String,
    /// digits, mnist or fashion-mnist: what `--shard` splits when a node has no data of its own.
    pub dataset: String,
    /// How `--shard I --shards N` splits the dataset: iid, dirichlet:ALPHA, shards:K.
    pub partition: String,
}

/// `[training]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSection {
    /// Local epochs per round (ignored when `local_steps` is set).
    pub local_epochs: usize,
    /// Local minibatch steps per round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_steps: Option<usize>,
    /// Minibatch size.
    pub batch: usize,
    /// sgd:LR[,MOMENTUM] or adam:LR.
    pub optimizer: String,
    /// FedProx mu.
    pub prox_mu: f64,
    /// Aggregation rule.
    pub rule: String,
    /// Server learning rate.
    pub server_lr: f64,
    /// Server momentum.
    pub server_momentum: f64,
    /// Nesterov server momentum.
    pub nesterov: bool,
    /// dense, int8, topk:FRAC, topk:FRAC+int8.
    pub compression: String,
    /// Error feedback for lossy compression.
    pub error_feedback: bool,
    /// clip:C,noise:SIGMA, or empty for none.
    #[serde(default)]
    pub dp: String,
    /// Largest sample claim a delta may carry (its FedAvg weight); a larger one is rejected.
    #[serde(default = "default_max_samples")]
    pub max_samples: u64,
}

fn default_max_samples() -> u64 {
    1_000_000
}

/// `[timeouts]`, milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutSection {
    /// Waiting for a proposal in view 0 (must cover local training and delta gossip).
    pub propose_ms: u64,
    /// Added per view.
    pub propose_per_view_ms: u64,
    /// Prevote and precommit timeouts in view 0.
    pub vote_ms: u64,
    /// Added per view.
    pub vote_per_view_ms: u64,
    /// Once it holds 2f + 1 deltas, how long the proposer waits for the rest.
    pub collect_ms: u64,
    /// Cap on any timeout.
    pub max_ms: u64,
    /// A round starts at least this long after the previous one started (0: as fast as the
    /// network goes). Bounds the ledger's growth, and the memory gossip spends on remembering
    /// recent messages, which grows with messages per second.
    #[serde(default)]
    pub min_round_ms: u64,
}

/// The parsed, checked genesis.
#[derive(Debug, Clone)]
pub struct Genesis {
    /// The file it came from.
    pub file: GenesisFile,
    /// The chain's identity in every signature: `NAME@HASH`, the file's chain id and the first
    /// 8 bytes (hex) of [`Genesis::hash`], so a node whose genesis differs in any setting signs
    /// for another chain and its messages fail every check.
    pub chain_id: ChainId,
    /// SHA-256 of the canonical TOML of the whole file.
    pub hash: [u8; 32],
    /// First validator set.
    pub validators: ValidatorSet,
    /// Model.
    pub model: ModelKind,
    /// Dataset for shards.
    pub dataset: DatasetKind,
    /// Partition for shards.
    pub partition: Partition,
    /// Local training.
    pub train: TrainConfig,
    /// Rule.
    pub rule: Aggregator,
    /// Server step.
    pub server: ServerOpt,
    /// Compression.
    pub compression: Compression,
    /// DP.
    pub dp: Option<DpConfig>,
    /// Consensus timeouts.
    pub timeouts: Timeouts,
    /// Largest sample claim accepted.
    pub max_samples: u64,
    /// Record-level DP.
    pub privacy: Privacy,
}

impl GenesisFile {
    /// Parses and checks every field.
    pub fn check(self) -> Result<Genesis> {
        if self.chain_id.is_empty() || self.chain_id.len() > 47 || self.chain_id.contains('@') {
            bail!(
                "chain id {:?} is not valid (1-47 bytes, no '@')",
                self.chain_id
            );
        }
        let canonical = toml::to_string(&self).context("canonical genesis")?;
        let hash: [u8; 32] = sha2::Sha256::digest(canonical.as_bytes()).into();
        let chain_id = ChainId::new(format!("{}@{}", self.chain_id, hex(&hash[..8])))
            .context("chain id with the genesis hash")?;
        let ids = self
            .validators
            .iter()
            .map(|v| parse_hex32(v).map(ValidatorId))
            .collect::<Result<Vec<_>>>()
            .context("validators")?;
        if ids.is_empty() {
            bail!("genesis has no validators");
        }
        let validators = ValidatorSet::new(ids).map_err(|e| anyhow::anyhow!("validators: {e}"))?;
        let t = &self.training;
        let train = TrainConfig {
            work: match t.local_steps {
                Some(s) => Work::Steps(s),
                None => Work::Epochs(t.local_epochs),
            },
            batch: t.batch,
            optimizer: t.optimizer.parse::<Optimizer>()?,
            prox_mu: t.prox_mu,
            dp_sgd: None,
        };
        let privacy = self.privacy.check()?;
        let train = TrainConfig {
            dp_sgd: privacy.dp_sgd,
            ..train
        };
        let to = &self.timeouts;
        let vote = LinearTimeout {
            base_ms: to.vote_ms,
            per_view_ms: to.vote_per_view_ms,
        };
        let timeouts = Timeouts {
            propose: LinearTimeout {
                base_ms: to.propose_ms,
                per_view_ms: to.propose_per_view_ms,
            },
            prevote: vote,
            precommit: vote,
            rebroadcast: LinearTimeout {
                base_ms: to.vote_ms.max(500),
                per_view_ms: 0,
            },
            max_ms: to.max_ms,
        };
        if !["open", "approve", "closed"].contains(&self.membership.policy.as_str()) {
            bail!(
                "membership.policy {:?}: expected closed, approve or open",
                self.membership.policy
            );
        }
        if !(4..=10_000).contains(&self.membership.downtime_window) {
            bail!("membership.downtime_window must be between 4 and 10,000 rounds");
        }
        if !(1..=self.membership.downtime_window).contains(&self.membership.promote_after) {
            bail!(
                "membership.promote_after must be between 1 and membership.downtime_window ({})",
                self.membership.downtime_window
            );
        }
        if t.max_samples == 0 {
            bail!("training.max_samples must be at least 1");
        }
        let model: ModelKind = self.model.kind.parse()?;
        let dataset: DatasetKind = self.model.dataset.parse()?;
        Ok(Genesis {
            chain_id,
            validators,
            model,
            dataset,
            partition: self.model.partition.parse()?,
            train,
            rule: t.rule.parse()?,
            server: ServerOpt {
                lr: t.server_lr,
                momentum: t.server_momentum,
                nesterov: t.nesterov,
            },
            compression: t.compression.parse()?,
            dp: if t.dp.trim().is_empty() {
                None
            } else {
                Some(t.dp.parse()?)
            },
            timeouts,
            hash,
            max_samples: self.training.max_samples,
            privacy,
            file: self,
        })
    }
}

impl Genesis {
    /// Loads and checks a genesis file.
    pub fn load(path: &Path) -> Result<Genesis> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading genesis {}", path.display()))?;
        let file: GenesisFile =
            toml::from_str(&text).with_context(|| format!("parsing genesis {}", path.display()))?;
        file.check()
            .with_context(|| format!("checking genesis {}", path.display()))
    }

    /// The initial parameters, the same bits on every node.
    pub fn initial_params(&self) -> Vec<f32> {
        self.model.init(self.file.seed)
    }
}

impl Genesis {
    /// The settings in which `other` differs from this genesis, as `key: ours vs theirs`.
    pub fn differences(&self, other: &GenesisFile) -> Vec<String> {
        let (Ok(a), Ok(b)) = (
            serde_json::to_value(&self.file),
            serde_json::to_value(other),
        ) else {
            return vec!["(unreadable)".into()];
        };
        let mut out = Vec::new();
        diff("", &a, &b, &mut out);
        out
    }
}

fn diff(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                let null = serde_json::Value::Null;
                diff(
                    &p,
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    out,
                );
            }
        }
        _ if a != b => out.push(format!("{path}: {a} here, {b} there")),
        _ => {}
    }
}

/// Writes a genesis TOML.
pub fn write(file: &GenesisFile, path: &Path) -> Result<()> {
    file.clone().check()?;
    let text = toml::to_string_pretty(file)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Defaults for a demo network on the embedded digits.
pub fn demo(chain_id: &str, validators: &[ValidatorId]) -> GenesisFile {
    GenesisFile {
        chain_id: chain_id.to_string(),
        seed: 1,
        validators: validators.iter().map(|v| hex(&v.0)).collect(),
        checkpoint_every: 5,
        model: ModelSection {
            kind: "digits-mlp".into(),
            dataset: "digits".into(),
            partition: "dirichlet:0.5".into(),
        },
        training: TrainingSection {
            local_epochs: 2,
            local_steps: None,
            batch: 16,
            optimizer: "sgd:0.1,0.9".into(),
            prox_mu: 0.0,
            rule: "nnm+centered-clip:0.1,3".into(),
            server_lr: 1.0,
            server_momentum: 0.0,
            nesterov: false,
            compression: "dense".into(),
            error_feedback: true,
            dp: String::new(),
            max_samples: default_max_samples(),
        },
        timeouts: TimeoutSection {
            propose_ms: 4000,
            propose_per_view_ms: 2000,
            vote_ms: 1000,
            vote_per_view_ms: 500,
            collect_ms: 500,
            max_ms: 60_000,
            min_round_ms: 250,
        },
        membership: MembershipSection::default(),
        privacy: PrivacySection::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_genesis_round_trips_through_toml() {
        let ids = [ValidatorId([1; 32]), ValidatorId([2; 32])];
        let g = demo("test-chain", &ids);
        let text = toml::to_string_pretty(&g).unwrap();
        let back: GenesisFile = toml::from_str(&text).unwrap();
        let checked = back.check().unwrap();
        assert_eq!(checked.validators.len(), 2);
        // The default rule is a robust one (f < n/3 malicious nodes must not poison the model).
        assert_eq!(checked.rule.to_string(), "nnm+centered-clip:0.1,3");
        assert_eq!(checked.model, ModelKind::DigitsMlp);
        let mut bad = g.clone();
        bad.training.rule = "nonsense".into();
        assert!(bad.check().is_err());
        let mut bad = g.clone();
        bad.validators.push("xyz".into());
        assert!(bad.check().is_err());
        // Any other setting is another chain, and the difference is named.
        let mut other = g.clone();
        other.training.rule = "mean".into();
        let (a, b) = (g.check().unwrap(), other.clone().check().unwrap());
        assert_ne!(a.chain_id, b.chain_id);
        assert!(a.chain_id.as_str().starts_with("test-chain@"));
        assert_eq!(
            a.differences(&other),
            vec!["training.rule: \"nnm+centered-clip:0.1,3\" here, \"mean\" there".to_string()]
        );
        assert!(a.differences(&a.file).is_empty());
    }
}
