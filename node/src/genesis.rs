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
use model::lm_local::{LmRounds, RoundSchedule};
use model::lowpass::LowPass;
use model::net::ModelSpec;
use model::partition::Partition;
use model::schema::DataSchema;
use model::text::Vocab;
use model::text_partition::TextPartition;
use model::train::{Optimizer, TrainConfig, Work};
use model::transformer::TransformerConfig;
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
    /// The schema every node's own data must fit (`[data]`, see `model::schema`); without it,
    /// the schema of `model.dataset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataSchema>,
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
    /// Secure aggregation: each node publishes only its masked delta and the network unmasks
    /// only the sample-weighted mean (`protocol::secure`). Only the mean rule, dense deltas, no
    /// node-level `training.dp`, no `open` membership.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secure_aggregation: bool,
    /// With secure aggregation: the fixed-point bound of each coordinate of a node's weighted
    /// delta `(samples / training.max_samples) * delta` (larger values are clamped).
    #[serde(
        default = "default_secagg_bound",
        skip_serializing_if = "is_default_bound"
    )]
    pub secagg_bound: f64,
    /// With secure aggregation and DP-SGD: t, the honest nodes assumed to add their share
    /// sigma / sqrt(t) of the noise (0: all genesis validators).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub secagg_honest: usize,
}

fn default_delta() -> f64 {
    1e-5
}

fn default_secagg_bound() -> f64 {
    1.0
}

fn is_default_bound(b: &f64) -> bool {
    *b == default_secagg_bound()
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The checked secure-aggregation settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SecureAggregation {
    /// Fixed-point bound of a weighted delta's coordinate.
    pub bound: f32,
    /// Honest nodes assumed to add their DP-SGD noise share.
    pub honest: usize,
}

impl Default for PrivacySection {
    fn default() -> Self {
        PrivacySection {
            dp_sgd: String::new(),
            epsilon_budget: 0.0,
            delta: default_delta(),
            secure_aggregation: false,
            secagg_bound: default_secagg_bound(),
            secagg_honest: 0,
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
    /// Secure aggregation, when on.
    pub secure: Option<SecureAggregation>,
}

impl PrivacySection {
    /// The checked section; every problem is added to `p`.
    fn check(&self, p: &mut Problems) -> Option<Privacy> {
        let dp_sgd = if self.dp_sgd.trim().is_empty() {
            Some(None)
        } else {
            p.parsed(
                "privacy.dp_sgd",
                &self.dp_sgd,
                self.dp_sgd
                    .parse::<DpSgdConfig>()
                    .and_then(|c| c.validate().map(|()| c)),
            )
            .map(Some)
        };
        p.require(
            self.delta > 0.0 && self.delta < 0.1,
            "privacy.delta",
            self.delta,
            "must be in (0, 0.1)",
        );
        p.require(
            self.epsilon_budget.is_finite() && self.epsilon_budget >= 0.0,
            "privacy.epsilon_budget",
            self.epsilon_budget,
            "must be finite and >= 0 (0: no budget)",
        );
        let budget = (self.epsilon_budget > 0.0).then_some(self.epsilon_budget);
        if let Some(dp_sgd) = dp_sgd {
            p.require(
                budget.is_none() || dp_sgd.is_some_and(|c| c.noise > 0.0),
                "privacy.epsilon_budget",
                self.epsilon_budget,
                "needs privacy.dp_sgd with noise > 0",
            );
        }
        let bound = self.secagg_bound as f32;
        p.require(
            bound.is_finite() && bound > 0.0 && bound <= 1e6,
            "privacy.secagg_bound",
            self.secagg_bound,
            "must be finite and in (0, 1e6]",
        );
        let secure = self.secure_aggregation.then_some(SecureAggregation {
            bound,
            honest: self.secagg_honest,
        });
        Some(Privacy {
            dp_sgd: dp_sgd?,
            budget,
            delta: self.delta,
            secure,
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
    /// Proof of work a join request must carry, in leading zero bits of its work hash (about
    /// 2^bits SHA-256 hashes to make one; 0..=32). It prices Sybil joins: every fresh key and
    /// every new request costs a fresh proof.
    #[serde(default = "default_join_work_bits")]
    pub join_work_bits: u32,
}

fn default_join_work_bits() -> u32 {
    20
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
            join_work_bits: default_join_work_bits(),
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
    /// mlp, cnn, logistic or digits-mlp (see `model::spec`), or `custom:NAME`: a model the
    /// binary registered (see `crate::custom`).
    pub kind: String,
    /// Hidden layers, e.g. `["dense:128", "dense:64"]` or `["conv5x5:32", "maxpool2",
    /// "dense:128"]` (`"dense:N:tanh"` for a tanh instead of the ReLU); empty: the kind's preset
    /// layers. Input and output sizes come from the data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<String>,
    /// digits, mnist or fashion-mnist: what `--shard` splits when a node has no data of its own.
    /// May be empty when `[data]` is given (every node then brings its own data).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dataset: String,
    /// How `--shard I --shards N` splits the dataset: iid, dirichlet:ALPHA, shards:K (by-role
    /// or iid for the transformer's text).
    pub partition: String,
    /// `kind = "transformer"` only: the characters every node's text is encoded with, in id
    /// order (fixed here so every node agrees; text outside it is refused by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab: Option<Vocab>,
    /// `kind = "transformer"` only: `[model.transformer]` layers, heads, dim and context
    /// (default: 4 layers, 4 heads, 128 wide, context 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transformer: Option<TransformerConfig>,
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
    /// Transformer only: the local learning rate over the rounds, `cosine:WARMUP,TOTAL_STEPS`
    /// on the global step `(round - 1) x local_steps + k` (empty: the optimizer's constant rate).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lr_schedule: String,
    /// Transformer only: every node keeps its AdamW moments from round to round (node-local
    /// state; only the deltas it shapes are committed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_moments: bool,
    /// MLP on images only: every committed first-layer update is projected onto each hidden
    /// unit's lowest K x K image frequencies (2-D DCT) before the server step
    /// ([`model::lowpass`]): post-processing of the aggregate, so free under DP, and it removes
    /// most of the DP noise on that layer. Absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lowpass_first_layer: Option<usize>,
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
    /// Added per view. Views after the first wait `vote_ms + view x propose_per_view_ms` for a
    /// proposal: their proposer holds the height's deltas already.
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
    /// Model, declared by `[model]` on the data's input and classes.
    pub model: ModelSpec,
    /// The data every node trains on.
    pub data: DataPlan,
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
    /// The transformer's learning-rate schedule over rounds and kept moments.
    pub lm_rounds: LmRounds,
    /// Record-level DP.
    pub privacy: Privacy,
    /// The first layer's low-pass filter on committed updates (`training.lowpass_first_layer`).
    pub lowpass: Option<LowPass>,
}

/// The checked data settings: labelled samples for the classifiers, text for the transformer.
#[derive(Debug, Clone)]
pub enum DataPlan {
    /// Samples fitting a schema.
    Samples(SamplePlan),
    /// Text, split by role or IID.
    Text(TextPlan),
}

/// The transformer's text: `model.dataset = "shakespeare"` read from each node's
/// `--dataset-dir`, split over `--shards` by `model.partition`.
#[derive(Debug, Clone)]
pub struct TextPlan {
    /// The genesis vocabulary.
    pub vocab: Vocab,
    /// by-role or iid.
    pub partition: TextPartition,
}

/// The checked settings of labelled samples.
#[derive(Debug, Clone)]
pub struct SamplePlan {
    /// What every node's data must look like: `[data]`, or the schema of `model.dataset`.
    pub schema: DataSchema,
    /// The public data set that `--shard` splits (none when `model.dataset` is empty).
    pub dataset: Option<DatasetKind>,
    /// How `--shard I --shards N` splits it.
    pub partition: Partition,
}

/// Accepted ranges of the training and timeout settings. A setting outside them does not
/// fail loudly at run time: the network commits round after round and never learns (a zero
/// learning rate or batch), or every server step is refused as non-finite (a huge one).
pub mod limits {
    /// Minibatch size.
    pub const BATCH: (usize, usize) = (1, 65_536);
    /// Local minibatch steps per round (also the steps DP-SGD takes for `local_epochs`).
    pub const LOCAL_STEPS: (usize, usize) = (1, 100_000);
    /// Local epochs per round.
    pub const LOCAL_EPOCHS: (usize, usize) = (1, 1_000);
    /// FedProx mu.
    pub const PROX_MU_MAX: f64 = 100.0;
    /// Any timeout, and the cap on all of them: one hour.
    pub const TIMEOUT_MAX_MS: u64 = 3_600_000;
}

/// Every problem found in a genesis, so that one run of `cohort genesis` or one failed start
/// names all of them, each as `setting = value: the accepted range`.
#[derive(Debug, Default)]
struct Problems(Vec<String>);

impl Problems {
    /// Records `setting = value: rule` unless `ok`.
    fn require(&mut self, ok: bool, setting: &str, value: impl std::fmt::Debug, rule: &str) {
        if !ok {
            self.0.push(format!("{setting} = {value:?}: {rule}"));
        }
    }

    /// Records `setting` unless it lies in `lo..=hi`.
    fn between<T: PartialOrd + std::fmt::Debug + std::fmt::Display>(
        &mut self,
        setting: &str,
        value: T,
        (lo, hi): (T, T),
    ) {
        let rule = format!("must be between {lo} and {hi}");
        self.require(value >= lo && value <= hi, setting, value, &rule);
    }

    /// The parsed value, or `None` with the error recorded under `setting`.
    fn parsed<T, E: std::fmt::Display>(
        &mut self,
        setting: &str,
        raw: &str,
        r: std::result::Result<T, E>,
    ) -> Option<T> {
        r.map_err(|e| self.0.push(format!("{setting} = {raw:?}: {e}")))
            .ok()
    }
}

impl GenesisFile {
    /// Parses and checks every field; the error lists every problem found, one a line.
    pub fn check(self) -> Result<Genesis> {
        let mut p = Problems::default();
        p.require(
            !self.chain_id.is_empty() && self.chain_id.len() <= 47 && !self.chain_id.contains('@'),
            "chain_id",
            &self.chain_id,
            "must be 1-47 bytes, with no '@'",
        );
        let ids: Vec<ValidatorId> = self
            .validators
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                p.parsed(&format!("validators[{i}]"), v, parse_hex32(v))
                    .map(ValidatorId)
            })
            .collect();
        p.require(
            !self.validators.is_empty(),
            "validators",
            &self.validators,
            "must name at least one validator",
        );
        let validators = if ids.is_empty() || ids.len() != self.validators.len() {
            None
        } else {
            p.parsed(
                "validators",
                &format!("{} keys", ids.len()),
                ValidatorSet::new(ids),
            )
        };
        let (model, data) = if self.model.kind == "transformer" {
            self.check_text(&mut p)
        } else {
            let (model, dataset, schema) = self.check_model(&mut p);
            let partition: Option<Partition> = p.parsed(
                "model.partition",
                &self.model.partition,
                self.model.partition.parse(),
            );
            for (set, key) in [
                (self.model.vocab.is_some(), "model.vocab"),
                (self.model.transformer.is_some(), "model.transformer"),
            ] {
                p.require(
                    !set,
                    key,
                    &self.model.kind,
                    "is for kind = \"transformer\" only",
                );
            }
            let data = match (dataset, schema, partition) {
                (Some(dataset), Some(schema), Some(partition)) => {
                    Some(DataPlan::Samples(SamplePlan {
                        schema,
                        dataset,
                        partition,
                    }))
                }
                _ => None,
            };
            (model, data)
        };
        let (train, server, rule, compression, dp) = self.training.check(&mut p);
        let lm_rounds = self
            .training
            .check_lm_rounds(&mut p, self.model.kind == "transformer");
        let privacy = self.privacy.check(&mut p);
        if let (
            Some(train),
            Some(Privacy {
                dp_sgd: Some(c), ..
            }),
        ) = (train, privacy)
        {
            let steps = c.steps(train.work);
            if steps > limits::LOCAL_STEPS.1 {
                p.0.push(format!(
                    "privacy.dp_sgd = {:?} with training.local_epochs = {}: {steps} DP-SGD steps \
                     a round (epochs / rate), more than {}",
                    self.privacy.dp_sgd,
                    self.training.local_epochs,
                    limits::LOCAL_STEPS.1
                ));
            }
        }
        let privacy = privacy
            .map(|pr| self.check_secure(&mut p, pr, self.validators.len(), train, rule.as_ref()));
        // A refusal is a problem in `p`, so the check below stops before `None` means "off".
        let lowpass = match (self.training.lowpass_first_layer, model.as_ref()) {
            (Some(k), Some(m)) => p.parsed(
                "training.lowpass_first_layer",
                &k.to_string(),
                LowPass::for_model(m, k),
            ),
            _ => None,
        };
        let timeouts = self.timeouts.check(&mut p);
        self.membership.check(&mut p);
        if !p.0.is_empty() {
            let n = p.0.len();
            bail!(
                "genesis has {n} invalid setting{}:\n  {}",
                if n == 1 { "" } else { "s" },
                p.0.join("\n  ")
            );
        }
        let (
            Some(validators),
            Some(model),
            Some(data),
            Some(train),
            Some(server),
            Some(rule),
            Some(compression),
            Some(dp),
            Some(privacy),
        ) = (
            validators,
            model,
            data,
            train,
            server,
            rule,
            compression,
            dp,
            privacy,
        )
        else {
            bail!("genesis: a setting failed to parse without a recorded reason");
        };
        let canonical = toml::to_string(&self).context("canonical genesis")?;
        let hash: [u8; 32] = sha2::Sha256::digest(canonical.as_bytes()).into();
        let chain_id = ChainId::new(format!("{}@{}", self.chain_id, hex(&hash[..8])))
            .context("chain id with the genesis hash")?;
        // With secure aggregation each node adds its share sigma / sqrt(t) of the DP-SGD noise;
        // the sum of t honest shares carries sigma (the accountant's, `privacy.dp_sgd`).
        let dp_sgd = match (privacy.dp_sgd, privacy.secure) {
            (Some(mut c), Some(sa)) => {
                c.noise /= (sa.honest as f64).sqrt();
                Some(c)
            }
            (c, _) => c,
        };
        Ok(Genesis {
            chain_id,
            validators,
            model,
            data,
            train: TrainConfig { dp_sgd, ..train },
            rule,
            server,
            compression,
            dp,
            timeouts,
            hash,
            max_samples: self.training.max_samples,
            lm_rounds,
            privacy,
            lowpass,
            file: self,
        })
    }
}

impl GenesisFile {
    /// Refuses what secure aggregation cannot run with (every problem is added to `p`) and
    /// fills in the honest-node count. Only the plain weighted mean can be unmasked: no robust
    /// rule (robust rules need individual deltas), no compression or error feedback (the masks
    /// sum dense fixed-point vectors), no node-level `training.dp` (its noise is per node, not
    /// the distributed kind), DP-SGD with exactly one local step (as `simulate` requires), and
    /// no `open` membership (contributors are not on the round's roster).
    fn check_secure(
        &self,
        p: &mut Problems,
        mut privacy: Privacy,
        validators: usize,
        train: Option<TrainConfig>,
        rule: Option<&Aggregator>,
    ) -> Privacy {
        let Some(sa) = privacy.secure.as_mut() else {
            return privacy;
        };
        let mean = Aggregator::from(model::aggregate::Rule::Mean);
        let t = &self.training;
        let why = "is not possible with privacy.secure_aggregation";
        p.require(
            rule.is_none_or(|r| *r == mean),
            "training.rule",
            &t.rule,
            &format!("{why}: only the mean can be unmasked (robust rules need individual deltas)"),
        );
        p.require(
            t.compression == "dense",
            "training.compression",
            &t.compression,
            why,
        );
        p.require(
            !t.error_feedback,
            "training.error_feedback",
            t.error_feedback,
            why,
        );
        p.require(
            t.dp.trim().is_empty(),
            "training.dp",
            &t.dp,
            &format!("{why}: use privacy.dp_sgd (each node adds its share of the noise)"),
        );
        p.require(
            !self.membership.contributors_first(),
            "membership.policy",
            &self.membership.policy,
            &format!("{why}: contributors are not on the round's roster"),
        );
        p.require(
            validators <= model::secagg::MAX_MEMBERS,
            "validators",
            validators,
            "secure aggregation admits at most 65536",
        );
        if privacy.dp_sgd.is_some() {
            p.require(
                train.is_none_or(|c| c.work == Work::Steps(1)),
                "training.local_steps",
                t.local_steps,
                "must be 1 with privacy.secure_aggregation and privacy.dp_sgd: later local steps \
                 would depend on a node's own noise share only",
            );
        }
        if sa.honest == 0 {
            sa.honest = validators.max(1);
        }
        p.require(
            sa.honest <= validators.max(1),
            "privacy.secagg_honest",
            sa.honest,
            "must be at most the number of genesis validators",
        );
        privacy
    }

    /// Checks a transformer's `[model]`: its shape, the vocabulary (required), the text data
    /// set (`shakespeare`; a node's own text is not supported yet) and its split (by-role or
    /// iid). Every problem is added to `p`.
    fn check_text(&self, p: &mut Problems) -> (Option<ModelSpec>, Option<DataPlan>) {
        let m = &self.model;
        p.require(
            self.data.is_none(),
            "data",
            "[data]",
            "the transformer trains on text: no [data] schema",
        );
        p.require(
            m.layers.is_empty(),
            "model.layers",
            &m.layers,
            "a transformer's shape is [model.transformer], not layers",
        );
        p.require(
            m.dataset == "shakespeare",
            "model.dataset",
            &m.dataset,
            "the transformer trains on \"shakespeare\" (each node's --dataset-dir)",
        );
        let partition: Option<TextPartition> =
            p.parsed("model.partition", &m.partition, m.partition.parse());
        if m.vocab.is_none() {
            p.0.push(
                "model.vocab: missing; a transformer needs the vocabulary every node encodes \
                 its text with (cohort genesis --dataset-dir DIR writes the corpus's)"
                    .into(),
            );
        }
        let cfg = m.transformer.unwrap_or_default();
        let model = m.vocab.as_ref().and_then(|v| {
            p.parsed(
                "model.transformer",
                &cfg.to_string(),
                ModelSpec::transformer(cfg, v.len()),
            )
        });
        // A delta's sample claim is the tokens it trained on, local_steps x batch x context:
        // peers refuse a claim above max_samples, so the genesis must not ask for one. Epochs
        // over a node's own text have no size the genesis knows.
        let t = &self.training;
        let tokens = t.local_steps.map(|s| {
            (s as u64)
                .saturating_mul(t.batch as u64)
                .saturating_mul(cfg.context as u64)
        });
        p.require(
            tokens.is_some_and(|n| n <= t.max_samples),
            "training.local_steps",
            t.local_steps,
            &format!(
                "a transformer counts local steps, and local_steps x batch ({}) x context ({}) \
                 tokens must be at most training.max_samples ({})",
                t.batch, cfg.context, t.max_samples
            ),
        );
        let data = match (&m.vocab, partition) {
            (Some(vocab), Some(partition)) => Some(DataPlan::Text(TextPlan {
                vocab: vocab.clone(),
                partition,
            })),
            _ => None,
        };
        (model, data)
    }

    /// Checks `[data]` and `[model]`: the schema (`[data]`, or the data set's), the data set
    /// `--shard` splits (which must fit `[data]` when both are given), and the declared model on
    /// the schema's input and classes. Every problem is added to `p`.
    fn check_model(
        &self,
        p: &mut Problems,
    ) -> (
        Option<ModelSpec>,
        Option<Option<DatasetKind>>,
        Option<DataSchema>,
    ) {
        let dataset: Option<Option<DatasetKind>> = if self.model.dataset.is_empty() {
            p.require(
                self.data.is_some(),
                "model.dataset",
                &self.model.dataset,
                "needs a [data] section when empty (then every node brings its own data)",
            );
            Some(None)
        } else {
            p.parsed(
                "model.dataset",
                &self.model.dataset,
                self.model.dataset.parse::<DatasetKind>(),
            )
            .map(Some)
        };
        let schema = match (&self.data, dataset) {
            (Some(s), _) => p
                .parsed("data", "[data]", s.validate().map(|()| s.clone()))
                .filter(|s| {
                    let max = model::compact::MAX_TRAIN_CLASSES;
                    p.require(
                        s.num_classes() <= max,
                        "data.classes",
                        s.num_classes(),
                        &format!("training takes at most {max} classes"),
                    );
                    s.num_classes() <= max
                }),
            (None, Some(Some(d))) => Some(d.schema()),
            (None, _) => None,
        };
        if let (Some(s), Some(Some(d))) = (&schema, dataset) {
            let ds = d.schema();
            p.require(
                ds.input_shape() == s.input_shape() && ds.num_classes() == s.num_classes(),
                "model.dataset",
                &self.model.dataset,
                &format!(
                    "its {} with {} classes do not fit [data] ({} with {} classes)",
                    ds.input_shape(),
                    ds.num_classes(),
                    s.input_shape(),
                    s.num_classes()
                ),
            );
        }
        let model = schema.as_ref().and_then(|s| {
            crate::custom::declare(
                &self.model.kind,
                &self.model.layers,
                s.input_shape(),
                s.num_classes(),
            )
            .map_err(|e| {
                p.0.push(format!(
                    "model.kind = {:?}, model.layers = {:?}: {e}",
                    self.model.kind, self.model.layers
                ))
            })
            .ok()
        });
        (model, dataset, schema)
    }
}

/// What [`TrainingSection::check`] yields: local training, server step, rule, compression and
/// node-level DP, each `None` when it did not parse.
type CheckedTraining = (
    Option<TrainConfig>,
    Option<ServerOpt>,
    Option<Aggregator>,
    Option<Compression>,
    Option<Option<DpConfig>>,
);

impl TrainingSection {
    /// Parses `lr_schedule` and `keep_moments`, which only the transformer's training reads
    /// (set for another model, each is a problem added to `p`).
    fn check_lm_rounds(&self, p: &mut Problems, transformer: bool) -> LmRounds {
        let schedule = if self.lr_schedule.trim().is_empty() {
            None
        } else {
            p.parsed(
                "training.lr_schedule",
                &self.lr_schedule,
                self.lr_schedule.parse::<RoundSchedule>(),
            )
        };
        let only = "is for model.kind = \"transformer\" only";
        p.require(
            transformer || self.lr_schedule.trim().is_empty(),
            "training.lr_schedule",
            &self.lr_schedule,
            only,
        );
        p.require(
            transformer || !self.keep_moments,
            "training.keep_moments",
            self.keep_moments,
            only,
        );
        LmRounds {
            schedule,
            keep_moments: self.keep_moments,
        }
    }

    /// Parses and range-checks `[training]`; every problem is added to `p`.
    fn check(&self, p: &mut Problems) -> CheckedTraining {
        p.between("training.batch", self.batch, limits::BATCH);
        let work = match self.local_steps {
            Some(s) => {
                p.between("training.local_steps", s, limits::LOCAL_STEPS);
                Work::Steps(s)
            }
            None => {
                p.between(
                    "training.local_epochs",
                    self.local_epochs,
                    limits::LOCAL_EPOCHS,
                );
                Work::Epochs(self.local_epochs)
            }
        };
        let optimizer: Option<Optimizer> = p.parsed(
            "training.optimizer",
            &self.optimizer,
            self.optimizer.parse(),
        );
        p.require(
            self.prox_mu.is_finite() && (0.0..=limits::PROX_MU_MAX).contains(&self.prox_mu),
            "training.prox_mu",
            self.prox_mu,
            &format!("must be finite and in [0, {}]", limits::PROX_MU_MAX),
        );
        let max_lr = model::train::MAX_LR;
        p.require(
            self.server_lr.is_finite() && self.server_lr > 0.0 && self.server_lr <= max_lr,
            "training.server_lr",
            self.server_lr,
            &format!("must be finite and in (0, {max_lr}]"),
        );
        p.require(
            self.server_momentum.is_finite() && (0.0..1.0).contains(&self.server_momentum),
            "training.server_momentum",
            self.server_momentum,
            "must be in [0, 1)",
        );
        let server = ServerOpt {
            lr: self.server_lr,
            momentum: self.server_momentum,
            nesterov: self.nesterov,
            schedule: None,
        };
        // The same ranges, checked where the server step lives (already reported above).
        let server = server.validate().is_ok().then_some(server);
        let rule: Option<Aggregator> = p.parsed("training.rule", &self.rule, self.rule.parse());
        let compression: Option<Compression> = p.parsed(
            "training.compression",
            &self.compression,
            self.compression.parse(),
        );
        let dp = if self.dp.trim().is_empty() {
            Some(None)
        } else {
            p.parsed("training.dp", &self.dp, self.dp.parse::<DpConfig>())
                .map(Some)
        };
        p.require(
            self.max_samples >= 1,
            "training.max_samples",
            self.max_samples,
            "must be at least 1",
        );
        let train = optimizer.map(|optimizer| TrainConfig {
            work,
            batch: self.batch,
            optimizer,
            prox_mu: self.prox_mu,
            dp_sgd: None,
        });
        (train, server, rule, compression, dp)
    }
}

impl TimeoutSection {
    /// Range-checks `[timeouts]` (every problem is added to `p`) and builds the consensus
    /// timeouts.
    fn check(&self, p: &mut Problems) -> Timeouts {
        let max = limits::TIMEOUT_MAX_MS;
        let range = (1, max);
        p.between("timeouts.propose_ms", self.propose_ms, range);
        p.between("timeouts.vote_ms", self.vote_ms, range);
        p.between("timeouts.max_ms", self.max_ms, range);
        p.between(
            "timeouts.propose_per_view_ms",
            self.propose_per_view_ms,
            (0, max),
        );
        p.between("timeouts.vote_per_view_ms", self.vote_per_view_ms, (0, max));
        p.between("timeouts.min_round_ms", self.min_round_ms, (0, max));
        p.require(
            self.max_ms >= self.propose_ms && self.max_ms >= self.vote_ms,
            "timeouts.max_ms",
            self.max_ms,
            &format!(
                "must be at least timeouts.propose_ms ({}) and timeouts.vote_ms ({}): it caps them",
                self.propose_ms, self.vote_ms
            ),
        );
        p.require(
            self.collect_ms <= self.propose_ms,
            "timeouts.collect_ms",
            self.collect_ms,
            &format!(
                "must be at most timeouts.propose_ms ({}): the proposer waits for stragglers \
                 within the others' propose timeout",
                self.propose_ms
            ),
        );
        let vote = LinearTimeout {
            base_ms: self.vote_ms,
            per_view_ms: self.vote_per_view_ms,
        };
        Timeouts {
            propose: LinearTimeout {
                base_ms: self.propose_ms,
                per_view_ms: self.propose_per_view_ms,
            },
            // Past view 0 the height's deltas are trained and gossiped: later views wait a
            // vote timeout, plus the per-view growth, for the proposal.
            propose_retry_ms: self.vote_ms,
            prevote: vote,
            precommit: vote,
            rebroadcast: LinearTimeout {
                base_ms: self.vote_ms.max(500),
                per_view_ms: 0,
            },
            max_ms: self.max_ms,
        }
    }
}

impl MembershipSection {
    /// Range-checks `[membership]`; every problem is added to `p`.
    fn check(&self, p: &mut Problems) {
        p.require(
            ["open", "approve", "closed"].contains(&self.policy.as_str()),
            "membership.policy",
            &self.policy,
            "must be closed, approve or open",
        );
        p.between(
            "membership.downtime_window",
            self.downtime_window,
            (4, 10_000),
        );
        p.require(
            (1..=self.downtime_window).contains(&self.promote_after),
            "membership.promote_after",
            self.promote_after,
            &format!(
                "must be between 1 and membership.downtime_window ({})",
                self.downtime_window
            ),
        );
        p.require(
            self.join_work_bits <= crate::wire::MAX_JOIN_WORK_BITS,
            "membership.join_work_bits",
            self.join_work_bits,
            &format!("must be at most {}", crate::wire::MAX_JOIN_WORK_BITS),
        );
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
            layers: Vec::new(),
            dataset: "digits".into(),
            partition: "dirichlet:0.5".into(),
            vocab: None,
            transformer: None,
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
            lr_schedule: String::new(),
            keep_moments: false,
            lowpass_first_layer: None,
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
        data: None,
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
        assert_eq!(checked.model, ModelSpec::digits_mlp());
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

    /// View 0 waits `propose_ms` for a proposal (training happens there); later views wait the
    /// vote timeout plus the per-view growth, so a dead proposer past view 0 costs no training
    /// window.
    #[test]
    fn past_view_0_the_propose_timeout_starts_from_the_vote_timeout() {
        use consensus::{TimeoutStep, View};
        let g = demo_file().check().unwrap();
        let t = &g.file.timeouts;
        let propose = |v| g.timeouts.duration_ms(TimeoutStep::Propose, View(v));
        assert_eq!(propose(0), t.propose_ms);
        assert_eq!(propose(1), t.vote_ms + t.propose_per_view_ms);
        assert_eq!(propose(2), t.vote_ms + 2 * t.propose_per_view_ms);
        assert!(propose(1) < t.propose_ms + t.propose_per_view_ms);
    }

    fn demo_file() -> GenesisFile {
        demo("test-chain", &[ValidatorId([1; 32]), ValidatorId([2; 32])])
    }

    /// The error of checking `g`, which must fail.
    fn refusal(g: GenesisFile) -> String {
        format!(
            "{:#}",
            g.check().expect_err("a nonsense genesis must be refused")
        )
    }

    #[test]
    fn the_first_layer_low_pass_is_checked_against_the_model() {
        assert!(demo_file().check().unwrap().lowpass.is_none());
        // Off, the file (and so its hash) is what it was before the setting existed.
        let text = toml::to_string(&demo_file()).unwrap();
        assert!(!text.contains("lowpass"), "{text}");
        let mut g = demo_file();
        g.training.lowpass_first_layer = Some(4);
        let lp = g.clone().check().unwrap().lowpass;
        assert_eq!(lp.as_ref().map(LowPass::k), Some(4));
        // The digits are 8 x 8: nine frequencies a side do not exist.
        g.training.lowpass_first_layer = Some(9);
        let why = refusal(g);
        assert!(
            why.contains("training.lowpass_first_layer = \"9\""),
            "{why}"
        );
        let mut g = demo_file();
        g.model.kind = "cnn".into();
        g.model.dataset = "mnist".into();
        g.training.lowpass_first_layer = Some(4);
        let why = refusal(g);
        assert!(why.contains("needs a dense model"), "{why}");
    }

    #[test]
    fn the_demo_and_the_cli_defaults_pass() {
        assert!(demo_file().check().is_ok());
        let mut g = demo_file();
        g.training.local_steps = Some(limits::LOCAL_STEPS.1);
        g.training.batch = limits::BATCH.1;
        g.training.optimizer = "adam:10".into();
        g.training.server_lr = 10.0;
        g.training.server_momentum = 0.99;
        g.training.prox_mu = 100.0;
        g.training.dp = "clip:1,noise:0".into();
        g.training.compression = "topk:0.01+int8".into();
        g.timeouts.collect_ms = g.timeouts.propose_ms;
        g.timeouts.max_ms = g.timeouts.propose_ms;
        assert!(g.check().is_ok(), "the edges of every range are accepted");
    }

    #[test]
    fn each_nonsense_training_setting_is_refused_by_name() {
        type Edit = fn(&mut GenesisFile);
        let cases: [(Edit, &str); 5] = [
            (
                |g| g.training.batch = 0,
                "training.batch = 0: must be between 1 and 65536",
            ),
            (
                |g| g.training.local_steps = Some(0),
                "training.local_steps = 0: must be between 1 and 100000",
            ),
            (
                |g| g.training.optimizer = "sgd:1e30".into(),
                "training.optimizer = \"sgd:1e30\": invalid optimizer 'sgd:1e30': learning rate \
                 1e30 must be finite and in (0, 10]",
            ),
            (
                |g| g.training.server_lr = f64::NAN,
                "training.server_lr = NaN: must be finite and in (0, 10]",
            ),
            (
                |g| g.training.server_momentum = 2.0,
                "training.server_momentum = 2.0: must be in [0, 1)",
            ),
        ];
        for (edit, says) in cases {
            let mut g = demo_file();
            edit(&mut g);
            let err = refusal(g);
            assert_eq!(err, format!("genesis has 1 invalid setting:\n  {says}"));
        }
    }

    #[test]
    fn more_nonsense_is_refused() {
        type Edit = fn(&mut GenesisFile);
        let cases: [(Edit, &str); 16] = [
            (|g| g.training.local_epochs = 0, "training.local_epochs = 0"),
            (
                |g| g.training.local_epochs = 1001,
                "training.local_epochs = 1001",
            ),
            (|g| g.training.batch = 65_537, "training.batch = 65537"),
            (
                |g| g.training.optimizer = "sgd:0".into(),
                "training.optimizer = \"sgd:0\"",
            ),
            (
                |g| g.training.optimizer = "sgd:0.1,1".into(),
                "momentum 1.0 must be in [0, 1)",
            ),
            (|g| g.training.server_lr = 0.0, "training.server_lr = 0.0"),
            (
                |g| g.training.server_momentum = -0.1,
                "training.server_momentum = -0.1",
            ),
            (
                |g| g.training.prox_mu = f64::INFINITY,
                "training.prox_mu = inf",
            ),
            (|g| g.training.prox_mu = -1.0, "training.prox_mu = -1.0"),
            (
                |g| g.training.dp = "clip:0,noise:1".into(),
                "training.dp = \"clip:0,noise:1\"",
            ),
            (
                |g| g.training.dp = "clip:1,noise:NaN".into(),
                "training.dp = \"clip:1,noise:NaN\"",
            ),
            (
                |g| g.training.compression = "topk:1.5".into(),
                "training.compression = \"topk:1.5\"",
            ),
            (
                |g| g.training.max_samples = 0,
                "training.max_samples = 0: must be at least 1",
            ),
            (
                |g| g.timeouts.vote_ms = 0,
                "timeouts.vote_ms = 0: must be between 1 and 3600000",
            ),
            (
                |g| g.timeouts.collect_ms = 5_000,
                "timeouts.collect_ms = 5000: must be at most timeouts.propose_ms (4000)",
            ),
            (
                |g| g.timeouts.max_ms = 3_000,
                "timeouts.max_ms = 3000: must be at least timeouts.propose_ms (4000)",
            ),
        ];
        for (edit, says) in cases {
            let mut g = demo_file();
            edit(&mut g);
            let err = refusal(g);
            assert!(
                err.starts_with("genesis has 1 invalid setting:"),
                "{says}: {err}"
            );
            assert!(err.contains(says), "{says}: {err}");
        }
        // DP-SGD turns epochs into epochs / rate steps: bounded like local_steps.
        let mut g = demo_file();
        g.privacy.dp_sgd = "clip:1,noise:1,rate:0.00001".into();
        let err = refusal(g);
        assert!(err.contains("200000 DP-SGD steps a round"), "{err}");
    }

    #[test]
    fn data_and_model_sections_are_checked_together() {
        let table: DataSchema = toml::from_str(
            "task = \"classification\"\nclasses = [\"a\", \"b\", \"c\"]\n\
             input = { kind = \"tabular\", label = \"y\", features = [\
             { name = \"x\", kind = \"numeric\" }, { name = \"z\", kind = \"numeric\" }] }",
        )
        .unwrap();
        let mut g = demo_file();
        g.data = Some(table);
        g.model.kind = "mlp".into();
        g.model.layers = vec!["dense:8".into()];
        g.model.dataset = String::new();
        let checked = g.clone().check().unwrap();
        assert_eq!(
            checked.model.to_string(),
            "mlp[dense:8](2 features -> 3 classes)"
        );
        assert!(matches!(
            checked.data,
            DataPlan::Samples(SamplePlan { dataset: None, .. })
        ));
        // The sections round-trip through the file, and an old file's hash is untouched by them.
        let text = toml::to_string_pretty(&g).unwrap();
        assert!(
            text.contains("[data]") && text.contains("layers = ["),
            "{text}"
        );
        let back: GenesisFile = toml::from_str(&text).unwrap();
        assert_eq!(back.check().unwrap().hash, checked.hash);
        let plain = toml::to_string_pretty(&demo_file()).unwrap();
        assert!(
            !plain.contains("layers") && !plain.contains("[data]"),
            "{plain}"
        );
        type Edit = fn(&mut GenesisFile);
        let cases: [(Edit, &str); 4] = [
            (
                |g| g.data = None,
                "model.dataset = \"\": needs a [data] section when empty",
            ),
            (
                |g| g.model.dataset = "mnist".into(),
                "model.dataset = \"mnist\": its 1x28x28 images with 10 classes do not fit \
                 [data] (2 features with 3 classes)",
            ),
            (
                |g| g.model.layers = vec!["dense:0".into()],
                "model.kind = \"mlp\", model.layers = [\"dense:0\"]: model: layer 'dense:0'",
            ),
            (
                |g| g.model.kind = "cnn".into(),
                "a cnn needs image input, and the data is 2 features",
            ),
        ];
        for (edit, says) in cases {
            let mut bad = g.clone();
            edit(&mut bad);
            let err = refusal(bad);
            assert!(err.contains(says), "{says}: {err}");
        }
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let mut g = demo_file();
        g.training.batch = 0;
        g.training.local_steps = Some(0);
        g.training.optimizer = "sgd:1e30".into();
        g.training.server_lr = f64::NAN;
        g.training.server_momentum = 2.0;
        g.training.rule = "nonsense".into();
        g.timeouts.vote_ms = 0;
        g.membership.policy = "anyone".into();
        g.privacy.delta = 0.5;
        let err = refusal(g);
        assert!(
            err.starts_with("genesis has 9 invalid settings:\n"),
            "{err}"
        );
        for setting in [
            "training.batch = 0",
            "training.local_steps = 0",
            "training.optimizer = \"sgd:1e30\"",
            "training.server_lr = NaN",
            "training.server_momentum = 2.0",
            "training.rule = \"nonsense\"",
            "timeouts.vote_ms = 0",
            "membership.policy = \"anyone\"",
            "privacy.delta = 0.5",
        ] {
            assert_eq!(
                err.lines()
                    .filter(|l| l.trim_start().starts_with(setting))
                    .count(),
                1,
                "{setting} listed once in: {err}"
            );
        }
    }

    #[test]
    fn a_file_on_disk_is_refused_when_written_and_when_loaded() {
        let dir = std::env::temp_dir().join(format!("cohort-genesis-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("genesis.toml");
        let mut g = demo_file();
        g.training.batch = 0;
        let err = format!("{:#}", write(&g, &path).expect_err("refused"));
        assert!(err.contains("training.batch = 0"), "{err}");
        assert!(!path.exists());
        // A file written by hand is refused when a node loads it.
        let text = toml::to_string_pretty(&g).expect("toml");
        std::fs::write(&path, text).expect("write");
        let err = format!("{:#}", Genesis::load(&path).expect_err("refused"));
        assert!(err.contains("checking genesis"), "{err}");
        assert!(
            err.contains("training.batch = 0: must be between 1 and 65536"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_transformer_genesis_needs_its_vocabulary_and_text() {
        let mut g = demo_file();
        g.model.kind = "transformer".into();
        g.model.dataset = "shakespeare".into();
        g.model.partition = "by-role".into();
        g.model.transformer = Some(TransformerConfig {
            layers: 1,
            heads: 2,
            dim: 16,
            context: 8,
        });
        g.training.local_steps = Some(2);
        let e = g.clone().check().unwrap_err().to_string();
        assert!(e.contains("model.vocab: missing"), "{e}");
        g.model.vocab = Some(Vocab::from_texts(["abc\n"]).unwrap());
        let checked = g.clone().check().unwrap();
        assert_eq!(checked.model.classes(), 4);
        assert!(matches!(checked.data, DataPlan::Text(_)));
        // Round trip through TOML keeps the hash.
        let text = toml::to_string_pretty(&g).unwrap();
        let back: GenesisFile = toml::from_str(&text).unwrap();
        assert_eq!(back.check().unwrap().hash, checked.hash);
        let mut bad = g.clone();
        bad.model.partition = "dirichlet:0.5".into();
        bad.model.dataset = "mnist".into();
        bad.model.layers = vec!["dense:4".into()];
        let e = bad.check().unwrap_err().to_string();
        for says in ["model.partition", "model.dataset", "model.layers"] {
            assert!(e.contains(says), "{says}: {e}");
        }
        // A token claim peers would refuse (or one the genesis cannot size) is refused here.
        for steps in [None, Some(usize::MAX)] {
            let mut big = g.clone();
            big.training.local_steps = steps;
            let e = big.check().unwrap_err().to_string();
            assert!(e.contains("training.local_steps"), "{e}");
        }
        let mut mlp = demo_file();
        mlp.model.vocab = g.model.vocab.clone();
        let e = mlp.check().unwrap_err().to_string();
        assert!(e.contains("model.vocab"), "{e}");
    }

    #[test]
    fn the_transformers_round_schedule_and_kept_moments_are_checked_settings() {
        let mut g = demo_file();
        g.model.kind = "transformer".into();
        g.model.dataset = "shakespeare".into();
        g.model.partition = "by-role".into();
        g.model.transformer = Some(TransformerConfig {
            layers: 1,
            heads: 2,
            dim: 16,
            context: 8,
        });
        g.model.vocab = Some(Vocab::from_texts(["abc\n"]).unwrap());
        g.training.local_steps = Some(2);
        // Unset: a constant rate and fresh moments, and the canonical TOML does not name them
        // (an older genesis keeps its hash).
        let plain = g.clone().check().unwrap();
        assert_eq!(plain.lm_rounds, LmRounds::default());
        let text = toml::to_string(&g).unwrap();
        assert!(!text.contains("lr_schedule") && !text.contains("keep_moments"));
        g.training.lr_schedule = "cosine:12,250".into();
        g.training.keep_moments = true;
        let set = g.clone().check().unwrap();
        assert_eq!(
            set.lm_rounds,
            LmRounds {
                schedule: Some(RoundSchedule {
                    warmup: 12,
                    total_steps: 250
                }),
                keep_moments: true
            }
        );
        assert_ne!(set.hash, plain.hash);
        let back: GenesisFile = toml::from_str(&toml::to_string_pretty(&g).unwrap()).unwrap();
        assert_eq!(back.check().unwrap().hash, set.hash);
        let mut bad = g.clone();
        bad.training.lr_schedule = "cosine:300,250".into();
        let e = refusal(bad);
        assert!(
            e.contains("training.lr_schedule = \"cosine:300,250\"") && e.contains("warm-up"),
            "{e}"
        );
        // On a classifier both are refused by name, not ignored.
        let mut mlp = demo_file();
        mlp.training.lr_schedule = "cosine:1,10".into();
        mlp.training.keep_moments = true;
        let e = refusal(mlp);
        for says in [
            "training.lr_schedule = \"cosine:1,10\": is for model.kind = \"transformer\" only",
            "training.keep_moments = true: is for model.kind = \"transformer\" only",
        ] {
            assert!(e.contains(says), "{says}: {e}");
        }
    }
}
