//! `cohort simulate`: N nodes in one process, no network, on the networked node's per-round math.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use model::aggregate::{Aggregator, ServerOpt};
use model::attack::Attack;
use model::codec::Compression;
use model::dp::DpConfig;
use model::dpsgd::DpSgdConfig;
use model::lm_local::{LmRounds, RoundSchedule};
use model::partition::{Partition, describe};
use model::secagg::local::SecAggConfig;
use model::sim::{SimConfig, Simulation};
use model::train::{Optimizer, TrainConfig, Work};

use model::net::ModelSpec;
use model::text_partition::TextPartition;
use model::transformer::TransformerConfig;

use super::common::{DataArgs, human_bytes};
use super::data::DataArg;
use super::text_data;

/// `COUNT:ATTACK`, e.g. `2:sign-flip` or `2:alie`.
#[derive(Debug, Clone, Copy)]
pub struct Byzantine {
    pub count: usize,
    pub attack: Attack,
}

impl std::str::FromStr for Byzantine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (n, a) = s
            .split_once(':')
            .ok_or_else(|| format!("expected COUNT:ATTACK, got {s:?}"))?;
        Ok(Byzantine {
            count: n.parse().map_err(|_| format!("bad count {n:?}"))?,
            attack: a.parse().map_err(|e: model::Error| e.to_string())?,
        })
    }
}

/// What `cohort simulate` evaluates and writes.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Evaluate every N rounds (always at the last).
    #[arg(long, default_value_t = 1)]
    pub eval_every: usize,
    /// Evaluate an exponential moving average of the committed model with this decay (e.g.
    /// 0.99) instead of the model: computed from committed parameters only, so it costs no
    /// privacy. The network does not keep one; this is for measuring.
    #[arg(long)]
    pub eval_ema: Option<f64>,
    /// Print the per-node label counts of the partition.
    #[arg(long)]
    pub show_partition: bool,
    /// Also write one CSV row per round to this file.
    #[arg(long)]
    pub csv: Option<std::path::PathBuf>,
}

/// Flags of `cohort simulate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub data: DataArgs,
    /// Number of simulated nodes.
    #[arg(long, default_value_t = 8)]
    pub nodes: usize,
    /// Data split over nodes: iid, dirichlet:ALPHA or shards[:K]; by-role or iid for the
    /// transformer's text.
    #[arg(long, default_value = "dirichlet:0.5")]
    pub partition: String,
    /// Training rounds.
    #[arg(long, default_value_t = 40)]
    pub rounds: usize,
    /// Aggregation rule: mean, median, trimmed-mean:BETA, multi-krum:F[,M], centered-clip:TAU[,ITERS],
    /// optionally after pre-steps nnm[:F]+ (nearest neighbour mixing) or arc[:F]+ (adaptive clipping).
    #[arg(long, default_value = "mean")]
    pub rule: Aggregator,
    /// Delta compression: dense, int8, topk:FRAC, topk:FRAC+int8.
    #[arg(long, default_value = "dense")]
    pub compress: Compression,
    /// Turn off error feedback for lossy compression.
    #[arg(long)]
    pub no_error_feedback: bool,
    #[command(flatten)]
    pub privacy: SimPrivacyArgs,
    /// Byzantine nodes: COUNT:ATTACK with ATTACK one of sign-flip[:SCALE], gaussian[:SIGMA],
    /// alie[:Z], label-flip, zeros.
    #[arg(long)]
    pub byzantine: Option<Byzantine>,
    /// Seed for the initial model, the partition and all training randomness.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Multiply every input feature (training and test data) by this fixed factor: a
    /// data-independent rescaling, so it costs no privacy. Under --dp-sgd it sets the first
    /// layer's share of each example's gradient norm, ||dz||^2 (||x||^2 + 1) (MNIST's ||x|| is
    /// about 9). Default: 1 (pixels in [0, 1]).
    #[arg(long)]
    pub input_scale: Option<f32>,
    /// What the run evaluates and writes.
    #[command(flatten)]
    pub report: ReportArgs,
    /// Local training.
    #[command(flatten)]
    pub local: LocalArgs,
    /// The server step.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `simulate`'s privacy flags: node-level DP, record-level DP-SGD, secure aggregation.
#[derive(clap::Args, Debug, Clone)]
pub struct SimPrivacyArgs {
    /// Node-level differential privacy of each delta: clip:C[,noise:SIGMA].
    #[arg(long)]
    pub dp: Option<DpConfig>,
    /// Record-level DP-SGD in local training: clip:C,noise:SIGMA,rate:Q. Its sampling and noise
    /// are seeded from --seed (reproducible, so not secret: `cohort run` draws them from the OS).
    #[arg(long)]
    pub dp_sgd: Option<DpSgdConfig>,
    /// Secure aggregation: the nodes' deltas are masked (pairwise X25519 + ChaCha20 masks and
    /// self masks, Bonawitz et al. 2017) and only their sample-weighted mean is unmasked; with
    /// --dp-sgd the noise is distributed (each node adds SIGMA / sqrt(--honest-nodes)) and needs
    /// --local-steps 1. The masks' secrets are seeded from --seed (reproducible, so not secret).
    #[arg(long)]
    pub secure_aggregation: bool,
    /// With --secure-aggregation: t, the honest nodes assumed to add their noise share
    /// (default: all --nodes). Each adds SIGMA / sqrt(t), so t honest nodes give the sum SIGMA.
    #[arg(long, requires = "secure_aggregation")]
    pub honest_nodes: Option<usize>,
    /// With --secure-aggregation: the fixed-point bound of each node's weighted delta per
    /// coordinate (larger values are clamped and counted).
    #[arg(long, default_value_t = 1.0, requires = "secure_aggregation")]
    pub secagg_bound: f32,
}

/// Local training flags of `cohort simulate`.
#[derive(clap::Args, Debug)]
pub struct LocalArgs {
    /// Local epochs per round.
    #[arg(long, default_value_t = 1, conflicts_with = "local_steps")]
    pub local_epochs: usize,
    /// Local minibatch steps per round (instead of epochs).
    #[arg(long)]
    pub local_steps: Option<usize>,
    /// Local minibatch size.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Local optimizer: sgd:LR[,MOMENTUM] or adam:LR.
    #[arg(long, default_value = "sgd:0.1,0.9")]
    pub optimizer: Optimizer,
    /// FedProx proximal weight mu (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub prox_mu: f64,
    /// Transformer only: the local learning rate over the run, cosine:WARMUP,TOTAL_STEPS (warm-up
    /// to the optimizer's rate, then cosine decay to a tenth of it at TOTAL_STEPS) on the global
    /// step (round - 1) x local steps + k, as `lm-train` schedules its steps. Default: constant.
    #[arg(long)]
    pub lr_schedule: Option<RoundSchedule>,
    /// Transformer only: each node keeps its AdamW moments from round to round (default: fresh
    /// moments every round).
    #[arg(long)]
    pub keep_moments: bool,
}

/// Server step flags of `cohort simulate`.
#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Server (outer) learning rate.
    #[arg(long, default_value_t = 1.0)]
    pub server_lr: f64,
    /// Server momentum (FedAvgM); 0 = off.
    #[arg(long, default_value_t = 0.0)]
    pub server_momentum: f64,
    /// Use Nesterov momentum for the server step (the DiLoCo outer step).
    #[arg(long)]
    pub nesterov: bool,
    /// The server learning rate over rounds, `cosine:WARMUP,ROUNDS`: linear warm-up, then
    /// cosine decay to a tenth of `--server-lr` at round ROUNDS (constant without it).
    #[arg(long)]
    pub server_lr_schedule: Option<model::lm_local::RoundSchedule>,
    /// Confine the first dense layer's updates to the lowest K x K frequencies (2-D DCT) of
    /// each hidden unit's input image, applied to the aggregate before the server step: fixed
    /// before any data is seen, so post-processing at no privacy cost; it removes most of the
    /// DP noise on that layer. MLP on images only.
    #[arg(long, value_name = "K")]
    pub lowpass_first_layer: Option<usize>,
}

pub fn run(a: Args) -> Result<()> {
    if a.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if a.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if let Some(d) = a.report.eval_ema
        && !(d.is_finite() && (0.0..1.0).contains(&d))
    {
        bail!("--eval-ema {d} must be in [0, 1)");
    }
    if let Some(b) = a.byzantine
        && b.count >= a.nodes
    {
        bail!(
            "--byzantine {} must be fewer than --nodes {}",
            b.count,
            a.nodes
        );
    }
    if a.data
        .model
        .as_deref()
        .is_some_and(|m| m.starts_with("transformer"))
    {
        return run_lm(a);
    }
    let partition: Partition = a
        .partition
        .parse()
        .map_err(|e| anyhow::anyhow!("--partition: {e}"))?;
    let mut loaded = a.data.load(a.seed)?;
    if let Some(s) = a.input_scale {
        if !(s.is_finite() && s > 0.0) {
            bail!("--input-scale {s} must be a positive number");
        }
        loaded.parts = loaded.parts.iter().map(|p| p.scaled(s)).collect();
        loaded.test = loaded.test.scaled(s);
    }
    let kind = loaded.model.clone();
    let own_parts = loaded.parts.len() > 1;
    if own_parts && loaded.parts.len() != a.nodes {
        bail!(
            "{} --dataset sources for --nodes {}: give one per node (node I trains on the I-th), \
             or one to split over the nodes",
            loaded.parts.len(),
            a.nodes
        );
    }
    let cfg = sim_config(&a, kind.clone(), partition);
    println!(
        "simulate: {} nodes, model {kind} ({} params), dataset {} ({} train / {} test), partition {}, {}",
        a.nodes,
        kind.num_params(),
        a.data.describe(),
        loaded.parts.iter().map(|p| p.len()).sum::<usize>(),
        loaded.test.len(),
        if own_parts {
            "each node its own data".to_string()
        } else {
            partition.to_string()
        },
        settings(&a),
    );
    if a.report.show_partition {
        if own_parts {
            for (i, p) in loaded.parts.iter().enumerate() {
                println!(
                    "node {i:>3}  {} samples  labels {:?}",
                    p.len(),
                    p.label_counts()
                );
            }
        } else if let Some(all) = loaded.parts.first() {
            // The index sets the simulation derives (same seed, same result).
            let idx = model::partition::partition(all, a.nodes, partition, a.seed);
            print!("{}", describe(all, &idx));
        }
    }
    let sim = if own_parts {
        Simulation::with_shards(cfg, loaded.parts, loaded.test)?
    } else {
        let split = model::data::Split {
            train: loaded
                .parts
                .into_iter()
                .next()
                .context("no training data")?,
            test: loaded.test,
        };
        Simulation::new(cfg, &split)?
    };
    drive(
        sim,
        a.rounds,
        a.report.csv.as_deref(),
        "accuracy",
        "test loss",
        a.privacy.secure_aggregation,
    )
}

/// `cohort simulate --model transformer...`: the character transformer on the Shakespeare
/// plays, each node its share of the roles (or IID chunks), validated on every role's tail.
fn run_lm(a: Args) -> Result<()> {
    let lm: TransformerConfig = a.data.model.as_deref().unwrap_or("transformer").parse()?;
    if !a.data.layers.is_empty() {
        bail!(
            "--layers is for mlp and cnn: give the transformer's shape as \
             --model transformer:layers=L,heads=H,dim=C,context=T"
        );
    }
    if a.data.dataset != [DataArg::Shakespeare] {
        bail!(
            "--model transformer trains on --dataset shakespeare (with --dataset-dir DIR), not {}",
            a.data.describe()
        );
    }
    if a.data.eval.is_some() || a.data.schema.is_some() {
        bail!(
            "--eval and --schema are for own data sets; the transformer validates on every role's tail"
        );
    }
    let how: TextPartition = a
        .partition
        .parse()
        .map_err(|e| anyhow::anyhow!("--partition: {e}"))?;
    let docs = text_data::load_shakespeare(a.data.data_dir.as_deref())?;
    let vocab = text_data::corpus_vocab(&docs)?;
    let kind = ModelSpec::transformer(lm, vocab.len())?;
    let shards = text_data::shards(&docs, a.nodes, how, a.seed, &vocab)?;
    let val = text_data::validation(&docs, &vocab)?;
    let steps = a.local.local_steps.unwrap_or(0);
    println!(
        "simulate: {} nodes, model {kind} ({} params), shakespeare ({} roles, {} train / {} \
         validation chars), partition {how}, {} tokens per node per round, {}",
        a.nodes,
        kind.num_params(),
        docs.len(),
        shards.iter().map(|s| s.len()).sum::<usize>(),
        val.len(),
        steps * a.local.batch * lm.context,
        settings(&a),
    );
    if a.report.show_partition {
        let parts = model::text_partition::partition_text(
            &docs,
            a.nodes,
            how,
            text_data::VAL_FRACTION,
            a.seed,
        );
        print!("{}", model::text_partition::describe(&parts));
    }
    let cfg = sim_config(&a, kind, Partition::Iid);
    let sim = Simulation::with_shards(cfg, shards, val)?;
    drive(
        sim,
        a.rounds,
        a.report.csv.as_deref(),
        "next-char accuracy",
        "val loss (nats/char)",
        a.privacy.secure_aggregation,
    )
}

/// The simulation the flags describe (`partition` is unused when every node has its shard).
fn sim_config(a: &Args, model: ModelSpec, partition: Partition) -> SimConfig {
    SimConfig {
        model,
        nodes: a.nodes,
        partition,
        train: TrainConfig {
            work: match a.local.local_steps {
                Some(s) => Work::Steps(s),
                None => Work::Epochs(a.local.local_epochs),
            },
            batch: a.local.batch,
            optimizer: a.local.optimizer,
            prox_mu: a.local.prox_mu,
            dp_sgd: a.privacy.dp_sgd,
        },
        lm_rounds: LmRounds {
            schedule: a.local.lr_schedule,
            keep_moments: a.local.keep_moments,
        },
        rule: a.rule.clone(),
        server: ServerOpt {
            lr: a.server.server_lr,
            momentum: a.server.server_momentum,
            nesterov: a.server.nesterov,
            schedule: a.server.server_lr_schedule,
        },
        compression: a.compress,
        error_feedback: !a.no_error_feedback,
        dp: a.privacy.dp,
        byzantine: a.byzantine.map(|b| (b.count, b.attack)),
        secure_aggregation: a.privacy.secure_aggregation.then(|| SecAggConfig {
            honest: a.privacy.honest_nodes.unwrap_or(a.nodes),
            bound: a.privacy.secagg_bound,
        }),
        seed: a.seed,
        eval_every: a.report.eval_every,
        ema: a.report.eval_ema,
        lowpass: a.server.lowpass_first_layer,
    }
}

/// The training, aggregation and attack settings, for the first line of output.
fn settings(a: &Args) -> String {
    format!(
        "rule {}, compress {}{}, local {} batch {} {}{}{}, server lr {}{} momentum {}{}{}{}",
        a.rule,
        a.compress,
        if a.no_error_feedback {
            " (no error feedback)"
        } else {
            ""
        },
        a.local
            .local_steps
            .map(|s| format!("{s} steps"))
            .unwrap_or_else(|| format!("{} epochs", a.local.local_epochs)),
        a.local.batch,
        a.local.optimizer,
        a.local
            .lr_schedule
            .map(|s| format!(" schedule {s}"))
            .unwrap_or_default(),
        if a.local.keep_moments {
            " (moments kept)"
        } else {
            ""
        },
        a.server.server_lr,
        a.server
            .server_lr_schedule
            .map(|s| format!(" schedule {s}"))
            .unwrap_or_default(),
        a.server.server_momentum,
        if a.server.nesterov { " nesterov" } else { "" }.to_string()
            + &a.server
                .lowpass_first_layer
                .map(|k| format!(", first layer's updates low-passed to {k}x{k} frequencies"))
                .unwrap_or_default(),
        a.privacy
            .dp
            .map(|d| format!(", dp clip {} noise {}", d.clip, d.noise))
            .unwrap_or_default()
            + &a.privacy
                .dp_sgd
                .map(|d| format!(", dp-sgd {d}"))
                .unwrap_or_default(),
        a.byzantine
            .map(|b| format!(", byzantine {} x {}", b.count, b.attack))
            .unwrap_or_default()
            + &a.input_scale
                .map(|s| format!(", inputs x {s}"))
                .unwrap_or_default()
            + &if a.privacy.secure_aggregation {
                format!(
                    ", secure aggregation (reproducible masks from --seed; {} honest nodes assumed, \
                     each adding noise SIGMA/sqrt({}); fixed-point bound {})",
                    a.privacy.honest_nodes.unwrap_or(a.nodes),
                    a.privacy.honest_nodes.unwrap_or(a.nodes),
                    a.privacy.secagg_bound
                )
            } else {
                String::new()
            },
    )
}

/// Runs `rounds` rounds, one line each, then the final evaluation and model hash; `metric` and
/// `loss` name the evaluation's two figures.
fn drive(
    mut sim: Simulation,
    rounds: usize,
    csv_path: Option<&std::path::Path>,
    metric: &str,
    loss_name: &str,
    secure_aggregation: bool,
) -> Result<()> {
    let mut csv =
        String::from("round,accuracy,loss,train_loss,bytes_per_node,dense_bytes,epsilon,seconds\n");
    let start = Instant::now();
    let mut total_bytes = 0usize;
    for _ in 0..rounds {
        let t = Instant::now();
        let rep = sim.step()?;
        let secs = t.elapsed().as_secs_f64();
        total_bytes += rep.bytes_per_node;
        let acc = rep
            .accuracy
            .map(|v| format!("{:>6.2}%", v * 100.0))
            .unwrap_or_else(|| "     -".into());
        let loss = rep
            .loss
            .map(|v| format!("{v:.4}"))
            .unwrap_or_else(|| "-".into());
        let eps = rep
            .epsilon
            .map(|e| format!("  eps {e:.2}"))
            .unwrap_or_default()
            + &rep
                .record_epsilon
                .map(|e| {
                    if secure_aggregation {
                        format!(
                            "  record eps {e:.2} (delta 1e-5, add/remove one record, against the aggregate)"
                        )
                    } else {
                        format!("  record eps {e:.2} (delta 1e-5, add/remove one record)")
                    }
                })
                .unwrap_or_default()
            + &rep
                .node_epsilon
                .map(|e| format!("  one node's share alone eps {e:.2}"))
                .unwrap_or_default()
            + &if rep.clamped > 0 {
                format!("  clamped {}", rep.clamped)
            } else {
                String::new()
            };
        println!(
            "round {:>4}  {metric} {acc}  {loss_name} {loss}  train loss {:.4}  sent {}/node ({:.1}x less than dense){eps}  {secs:.2}s",
            rep.round,
            rep.train_loss,
            human_bytes(rep.bytes_per_node as f64),
            rep.dense_bytes as f64 / rep.bytes_per_node.max(1) as f64,
        );
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{secs:.4}\n",
            rep.round,
            rep.accuracy.map(|v| v.to_string()).unwrap_or_default(),
            rep.loss.map(|v| v.to_string()).unwrap_or_default(),
            rep.train_loss,
            rep.bytes_per_node,
            rep.dense_bytes,
            rep.epsilon.map(|v| v.to_string()).unwrap_or_default(),
        ));
    }
    let (acc, loss) = sim.evaluate()?;
    println!(
        "final: {metric} {:.2}%  {loss_name} {loss:.4}  model hash {}  {} sent per node in total  {:.1}s",
        acc * 100.0,
        hex::encode(model::params::hash_params(sim.params())),
        human_bytes(total_bytes as f64),
        start.elapsed().as_secs_f64()
    );
    if let Some(path) = csv_path {
        std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
