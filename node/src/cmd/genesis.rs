//! `cohort genesis`.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use model::transformer::TransformerConfig;

use consensus::ValidatorId;

use crate::genesis::{GenesisFile, demo, write};
use crate::keys::load_public;

/// Flags of `cohort genesis`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Validators: comma-separated `.pub` files or hex public keys.
    #[arg(long, value_delimiter = ',', required = true)]
    pub validators: Vec<String>,
    /// Network name.
    #[arg(long, default_value = "cohort-local")]
    pub chain_id: String,
    /// Model, data and training settings.
    #[command(flatten)]
    pub training: TrainingArgs,
    /// The Shakespeare plays (for --model transformer: the genesis fixes their vocabulary).
    #[arg(long)]
    pub dataset_dir: Option<PathBuf>,
    /// Who may join: closed (the genesis set only), approve (once the operators of a quorum of
    /// the validators ran `cohort approve KEY`) or open (a signed request makes a contributor,
    /// promoted to validator after --promote-after included deltas), each within the admission
    /// bound.
    #[arg(long, default_value = "open")]
    pub membership: String,
    /// Downtime window W in rounds (removal of validators missing from more than half of it;
    /// admission bound).
    #[arg(long, default_value_t = 100)]
    pub downtime_window: u64,
    /// Under `open`: included deltas (within the last W rounds) that promote a contributor.
    #[arg(long, default_value_t = 8)]
    pub promote_after: u64,
    /// Proof of work a join request must carry, in zero bits (about 2^bits SHA-256 hashes per
    /// request; 20 is a fraction of a second on one core). The price of a Sybil join.
    #[arg(long, default_value_t = 20)]
    pub join_work_bits: u32,
    /// Output file.
    #[arg(long, default_value = "genesis.toml")]
    pub out: PathBuf,
}

/// The genesis settings a network is started with, shared by `cohort genesis` and
/// `cohort testnet`. Every flag has the demo's default.
#[derive(clap::Args, Debug, Clone)]
pub struct TrainingArgs {
    /// Local epochs per round.
    #[arg(long, default_value_t = 2)]
    pub local_epochs: usize,
    /// Local steps per round (instead of epochs).
    #[arg(long)]
    pub local_steps: Option<usize>,
    /// Minibatch size.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// sgd:LR[,MOMENTUM] or adam:LR.
    #[arg(long, default_value = "sgd:0.1,0.9")]
    pub optimizer: String,
    /// FedProx mu.
    #[arg(long, default_value_t = 0.0)]
    pub prox_mu: f64,
    /// Aggregation: [nnm[:F]+|arc[:F]+]RULE with RULE one of mean, median, trimmed-mean:BETA,
    /// multi-krum:F[,M], centered-clip:TAU[,ITERS].
    #[arg(long, default_value = "nnm+centered-clip:0.1,3")]
    pub rule: String,
    /// The server step and what local training carries from round to round.
    #[command(flatten)]
    pub rounds: RoundArgs,
    /// Delta compression: dense, int8, topk:FRAC, topk:FRAC+int8.
    #[arg(long, default_value = "dense")]
    pub compress: String,
    /// Turn off error feedback (the residual of lossy compression kept for the next round).
    #[arg(long)]
    pub no_error_feedback: bool,
    /// Seed of the initial model.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Proposal timeout in view 0, ms (must cover local training).
    #[arg(long, default_value_t = 4000)]
    pub propose_ms: u64,
    /// Checkpoint every K rounds.
    #[arg(long, default_value_t = 5)]
    pub checkpoint_every: u64,
    /// Model and data.
    #[command(flatten)]
    pub data: ModelArgs,
    /// Record-level privacy.
    #[command(flatten)]
    pub privacy: PrivacyArgs,
}

/// The server (outer) step, and the transformer's learning rate and moments over the rounds.
#[derive(clap::Args, Debug, Clone)]
pub struct RoundArgs {
    /// Server learning rate.
    #[arg(long, default_value_t = 1.0)]
    pub server_lr: f64,
    /// Server momentum.
    #[arg(long, default_value_t = 0.0)]
    pub server_momentum: f64,
    /// Nesterov server momentum (the DiLoCo outer step).
    #[arg(long)]
    pub nesterov: bool,
    /// Transformer only: the local learning rate over the rounds, cosine:WARMUP,TOTAL_STEPS on
    /// the global step (round - 1) x local steps + k (default: constant).
    #[arg(long, default_value = "")]
    pub lr_schedule: String,
    /// Transformer only: every node keeps its AdamW moments from round to round.
    #[arg(long)]
    pub keep_moments: bool,
    /// MLP on images only: confine the first layer's committed updates to each hidden unit's
    /// lowest K x K image frequencies (2-D DCT); post-processing, so free under DP, and it
    /// removes most of the DP noise on that layer (`[training] lowpass_first_layer`).
    #[arg(long, value_name = "K")]
    pub lowpass_first_layer: Option<usize>,
}

/// Privacy: the genesis `[privacy]` section, and node-level DP (`training.dp`).
#[derive(clap::Args, Debug, Clone)]
pub struct PrivacyArgs {
    /// Node-level differential privacy of each delta, clip:C,noise:SIGMA (empty: none).
    #[arg(long, default_value = "")]
    pub dp: String,
    /// Record-level DP-SGD in local training, clip:C,noise:SIGMA,rate:Q (empty: none).
    #[arg(long, default_value = "")]
    pub dp_sgd: String,
    /// Epsilon a node may spend at --dp-delta before it stops contributing (0: no budget).
    #[arg(long, default_value_t = 0.0)]
    pub epsilon_budget: f64,
    /// The delta of (epsilon, delta)-DP.
    #[arg(long, default_value_t = 1e-5)]
    pub dp_delta: f64,
    /// Secure aggregation: nodes publish masked deltas, only the mean is unmasked (needs
    /// --rule mean, --compress dense, --no-error-feedback, no --dp).
    #[arg(long)]
    pub secure_aggregation: bool,
    /// With --secure-aggregation: the fixed-point bound of a coordinate of
    /// (samples / max_samples) * delta.
    #[arg(long, default_value_t = 1.0)]
    pub secagg_bound: f64,
    /// With --secure-aggregation and --dp-sgd: t, the honest nodes assumed to add their noise
    /// share sigma / sqrt(t) (0: all validators).
    #[arg(long, default_value_t = 0)]
    pub secagg_honest: usize,
}

/// The model and the dataset a network trains.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// mlp, cnn, logistic, digits-mlp; custom:NAME for a model the binary registered; or
    /// transformer[:layers=L,heads=H,dim=C,context=T] (with --dataset shakespeare --partition
    /// by-role|iid and --dataset-dir).
    #[arg(long, default_value = "digits-mlp")]
    pub model: String,
    /// The model's hidden layers, comma-separated: dense:N (ReLU), dense:N:tanh, convKxK:N,
    /// maxpoolS (default: the kind's preset layers).
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<String>,
    /// A TOML file whose `[data]` section (the schema every node's own data must fit) becomes
    /// the genesis `[data]`.
    #[arg(long)]
    pub schema: Option<PathBuf>,
    /// digits, mnist or fashion-mnist: what `--shard` splits (default digits, or none with
    /// --schema, where every node brings its own data).
    #[arg(long)]
    pub dataset: Option<String>,
    /// How `--shard` splits the dataset: iid, dirichlet:ALPHA, shards:K.
    #[arg(long, default_value = "dirichlet:0.5")]
    pub partition: String,
}

impl TrainingArgs {
    /// The demo genesis for `ids` with these settings.
    ///
    /// `--model transformer[:...]` declares the character transformer on `--dataset
    /// shakespeare`; the plays in `dataset_dir` fix the genesis vocabulary.
    pub fn genesis(
        &self,
        chain_id: &str,
        ids: &[ValidatorId],
        dataset_dir: Option<&Path>,
    ) -> Result<GenesisFile> {
        let a = self.clone();
        let mut g = demo(chain_id, ids);
        g.seed = a.seed;
        g.checkpoint_every = a.checkpoint_every;
        if a.data.model.starts_with("transformer") {
            let cfg: TransformerConfig = a.data.model.parse()?;
            if !a.data.layers.is_empty() || a.data.schema.is_some() {
                bail!("--layers and --schema are not for the transformer (its shape is --model)");
            }
            let dataset = a.data.dataset.unwrap_or_else(|| "shakespeare".into());
            if dataset != "shakespeare" {
                bail!("--model transformer trains on --dataset shakespeare, not {dataset}");
            }
            let docs = super::text_data::load_shakespeare(dataset_dir)?;
            g.model.kind = "transformer".into();
            g.model.transformer = Some(cfg);
            g.model.vocab = Some(super::text_data::corpus_vocab(&docs)?);
            g.model.dataset = dataset;
        } else {
            g.model.kind = a.data.model;
            g.model.layers = a.data.layers;
            if let Some(path) = &a.data.schema {
                let (schema, _, _) = super::data::read_schema_file(path)?;
                g.data = Some(schema);
            }
            g.model.dataset = a.data.dataset.unwrap_or_else(|| {
                if g.data.is_some() {
                    String::new()
                } else {
                    "digits".into()
                }
            });
        }
        g.model.partition = a.data.partition;
        let t = &mut g.training;
        t.local_epochs = a.local_epochs;
        t.local_steps = a.local_steps;
        t.batch = a.batch;
        t.optimizer = a.optimizer;
        t.prox_mu = a.prox_mu;
        t.rule = a.rule;
        t.server_lr = a.rounds.server_lr;
        t.server_momentum = a.rounds.server_momentum;
        t.nesterov = a.rounds.nesterov;
        t.lr_schedule = a.rounds.lr_schedule;
        t.keep_moments = a.rounds.keep_moments;
        t.lowpass_first_layer = a.rounds.lowpass_first_layer;
        t.compression = a.compress;
        t.error_feedback = !a.no_error_feedback;
        t.dp = a.privacy.dp;
        g.timeouts.propose_ms = a.propose_ms;
        // The cap on every timeout must not cut the propose timeout asked for.
        g.timeouts.max_ms = g.timeouts.max_ms.max(a.propose_ms);
        g.privacy.dp_sgd = a.privacy.dp_sgd;
        g.privacy.epsilon_budget = a.privacy.epsilon_budget;
        g.privacy.delta = a.privacy.dp_delta;
        g.privacy.secure_aggregation = a.privacy.secure_aggregation;
        g.privacy.secagg_bound = a.privacy.secagg_bound;
        g.privacy.secagg_honest = a.privacy.secagg_honest;
        Ok(g)
    }
}

pub fn run(a: Args) -> Result<()> {
    let ids = a
        .validators
        .iter()
        .map(|v| load_public(v))
        .collect::<Result<Vec<_>>>()?;
    let mut g = a
        .training
        .genesis(&a.chain_id, &ids, a.dataset_dir.as_deref())?;
    g.membership.policy = a.membership;
    g.membership.downtime_window = a.downtime_window;
    g.membership.promote_after = a.promote_after;
    g.membership.join_work_bits = a.join_work_bits;
    write(&g, &a.out)?;
    println!(
        "wrote {} ({} validators, chain {})",
        a.out.display(),
        ids.len(),
        g.chain_id
    );
    Ok(())
}
