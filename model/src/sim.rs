//! `N` simulated nodes in one process running the exact per-round math of the networked node:
//! train locally, privatise, compress (with error feedback), decode what peers would decode,
//! aggregate with the configured rule in a fixed order, take the server step. No network, no clock.
//!
//! With secure aggregation ([`SimConfig::secure_aggregation`]) the deltas are masked and only
//! their weighted mean is unmasked ([`crate::secagg::local`]), and DP-SGD becomes *distributed*
//! DP: each node adds noise `sigma / sqrt(t)` per step so that the sum of `t` honest nodes'
//! shares carries `sigma`. With one local step per round, every node's step is a query on the
//! committed (public) model, so the unmasked sum is exactly one step of centralized DP-SGD on the
//! union of the nodes' records (Poisson sampling at rate `q` on every node is Poisson sampling
//! of the union; the weighted mean divides the summed clipped gradients and noise by the union's
//! expected batch `q N`). With more local steps a node's later steps depend on its own
//! intermediate parameters, which carry only its own noise `sigma / sqrt(t)`: the released sum is
//! then not `sigma`-noisy per step, so that combination is refused.

use candle_core::Device;

use crate::aggregate::{Aggregator, Contribution, ServerOpt};
use crate::attack::{Attack, flip_labels};
use crate::codec::{Compression, decode, encode, encode_with_feedback};
use crate::data::{Dataset, Split};
use crate::dp::{Accountant, DpConfig, privatise};
use crate::dpsgd::NoiseSource;
use crate::error::Result;
use crate::lm_local::{LmRounds, LocalLm};
use crate::lowpass::LowPass;
use crate::net::{Model, ModelSpec};
use crate::partition::{Partition, partition};
use crate::rng::Rng;
use crate::secagg::local::{SecAggConfig, masked_mean};
use crate::secagg::{Domain, SecAggError};
use crate::train::{TrainConfig, evaluate, evaluate_params, train_local_with_noise};

/// Everything that defines a simulated run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The network.
    pub model: ModelSpec,
    /// Number of nodes.
    pub nodes: usize,
    /// How the training set is split.
    pub partition: Partition,
    /// Local training per round.
    pub train: TrainConfig,
    /// For the transformer: the learning-rate schedule over rounds and whether each node keeps
    /// its AdamW moments between rounds ([`crate::lm_local`]).
    pub lm_rounds: LmRounds,
    /// Aggregation rule.
    pub rule: Aggregator,
    /// Server (outer) optimiser.
    pub server: ServerOpt,
    /// Delta compression.
    pub compression: Compression,
    /// Keep what compression drops and add it to the next delta.
    pub error_feedback: bool,
    /// Client-level DP (clip + Gaussian noise), applied before compression.
    pub dp: Option<DpConfig>,
    /// Number of Byzantine nodes (the first ids) and what they do.
    pub byzantine: Option<(usize, Attack)>,
    /// Secure aggregation (masked deltas, only the mean unmasked) with distributed DP-SGD noise.
    pub secure_aggregation: Option<SecAggConfig>,
    /// Seed for the initial model, the partition and every node's RNG.
    pub seed: u64,
    /// Evaluate on the test set every this many rounds (and at the last round).
    pub eval_every: usize,
    /// Evaluate an exponential moving average of the committed parameters with this decay
    /// (`avg = d avg + (1 - d) theta` after each round) instead of the parameters themselves:
    /// a function of what was committed, so under DP it costs no privacy.
    pub ema: Option<f64>,
    /// Project the first layer's update onto its lowest `k x k` image frequencies before the
    /// server step ([`crate::lowpass`]; post-processing of the aggregate, no privacy cost).
    pub lowpass: Option<usize>,
}

/// One line of the simulation's output.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoundReport {
    /// 1-based round number.
    pub round: usize,
    /// Test accuracy of the committed model after this round (None if not evaluated).
    pub accuracy: Option<f32>,
    /// Test loss after this round (None if not evaluated).
    pub loss: Option<f32>,
    /// Mean local training loss of the honest nodes.
    pub train_loss: f32,
    /// Mean bytes one honest node sent for its delta this round.
    pub bytes_per_node: usize,
    /// Dense size of a delta, for comparison.
    pub dense_bytes: usize,
    /// Epsilon at delta = 1e-5 so far, when DP noise is on.
    pub epsilon: Option<f64>,
    /// Record-level epsilon at delta = 1e-5 so far, when DP-SGD noise is on: the sampled Gaussian
    /// at the DP-SGD rate composed over every local step of every round (each record sits on one
    /// node, so the nodes' steps do not compose with each other). With secure aggregation: for
    /// noise `sigma` on the sum (privacy against whoever sees only the aggregate, assuming `t`
    /// honest nodes add their share), composed over the rounds (one step each).
    pub record_epsilon: Option<f64>,
    /// With secure aggregation and DP-SGD: the epsilon of one node's own share of the noise,
    /// `sigma / sqrt(t)`, against whoever would see that node's delta unmasked.
    pub node_epsilon: Option<f64>,
    /// With secure aggregation: coordinates clamped to the fixed-point bound this round.
    pub clamped: usize,
}

/// The state of a simulated network.
pub struct Simulation {
    cfg: SimConfig,
    shards: Vec<Dataset>,
    test: Dataset,
    params: Vec<f32>,
    velocity: Vec<f32>,
    /// The moving average of `params` (`SimConfig::ema`; empty when off).
    average: Vec<f32>,
    residuals: Vec<Vec<f32>>,
    round: usize,
    /// The classifier evaluated after a round (`None` for a transformer, which
    /// [`evaluate_params`] builds per evaluation).
    eval_model: Option<Model>,
    /// Each node's transformer trainer (its AdamW moments), kept between rounds.
    lm_local: Vec<Option<LocalLm>>,
    /// The first layer's low-pass filter (`SimConfig::lowpass`).
    lowpass: Option<LowPass>,
}

impl Simulation {
    /// Partitions `split.train` over the nodes and derives the initial model from the seed.
    pub fn new(cfg: SimConfig, split: &Split) -> Result<Self> {
        let parts = partition(&split.train, cfg.nodes, cfg.partition, cfg.seed);
        let shards = parts.iter().map(|idx| split.train.subset(idx)).collect();
        Self::with_shards(cfg, shards, split.test.clone())
    }

    /// Node `i` trains on `shards[i]` (each party's own data; `cfg.partition` is unused), the
    /// model is evaluated on `test`.
    pub fn with_shards(cfg: SimConfig, mut shards: Vec<Dataset>, test: Dataset) -> Result<Self> {
        if shards.len() != cfg.nodes {
            return Err(crate::error::Error::Dataset(format!(
                "{} data sets for {} nodes",
                shards.len(),
                cfg.nodes
            )));
        }
        let byz = cfg.byzantine.map(|(k, _)| k).unwrap_or(0);
        for d in shards.iter_mut().take(byz) {
            if cfg.byzantine.is_some_and(|(_, a)| a.is_data_level()) {
                flip_labels(&mut d.y, cfg.model.classes());
            }
        }
        check_secure_aggregation(&cfg)?;
        if cfg.lm_rounds != LmRounds::default() && cfg.model.lm_config().is_none() {
            return Err(crate::error::Error::Model(
                "a learning-rate schedule over rounds and kept moments are for the transformer"
                    .into(),
            ));
        }
        let lowpass = cfg
            .lowpass
            .map(|k| LowPass::for_model(&cfg.model, k))
            .transpose()?;
        let params = cfg.model.init(cfg.seed);
        let eval_model = match cfg.model.lm_config() {
            Some(_) => None,
            None => Some(Model::new(&cfg.model, &params, &Device::Cpu)?),
        };
        Ok(Simulation {
            residuals: vec![Vec::new(); cfg.nodes],
            lm_local: (0..cfg.nodes).map(|_| None).collect(),
            shards,
            test,
            params,
            velocity: Vec::new(),
            average: Vec::new(),
            round: 0,
            eval_model,
            lowpass,
            cfg,
        })
    }

    /// The per-node datasets.
    pub fn shards(&self) -> &[Dataset] {
        &self.shards
    }

    /// The current global parameters.
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// Runs one round.
    pub fn step(&mut self) -> Result<RoundReport> {
        self.round += 1;
        let r = self.round as u64;
        let cfg = &self.cfg;
        let n_params = self.params.len();
        let (byz, attack) = cfg.byzantine.unwrap_or((0, Attack::Zeros));
        // What every node's peers decode; `None` where decoding refused the bytes (a diverged,
        // non-finite delta is rejected like any malformed one and left out of the round).
        let mut sent: Vec<Option<Vec<f32>>> = Vec::with_capacity(cfg.nodes);
        let mut samples = Vec::with_capacity(cfg.nodes);
        let mut honest_bytes = 0usize;
        let mut honest_loss = 0.0f64;
        let mut honest = 0usize;
        let mut raw_byz: Vec<(usize, Vec<f32>)> = Vec::new();
        // With secure aggregation each node adds its share sigma / sqrt(t) of the DP-SGD noise.
        let mut train = cfg.train;
        if let (Some(sa), Some(dp)) = (cfg.secure_aggregation, train.dp_sgd.as_mut()) {
            dp.noise /= (sa.honest as f64).sqrt();
        }
        let mut plain: Vec<Vec<f32>> = Vec::new();
        for (i, shard) in self.shards.iter().enumerate() {
            let stream = (r << 20) | i as u64;
            let mut rng = Rng::derive(cfg.seed, stream);
            // Reproducible, NOT secret: a simulation's DP-SGD noise follows from its seed, so its
            // epsilon describes the mechanism, not a guarantee about this run's output.
            let mut noise = cfg
                .train
                .dp_sgd
                .map(|_| NoiseSource::reproducible(cfg.seed, stream));
            let out = if cfg.model.lm_config().is_some() {
                let slot = &mut self.lm_local[i];
                if slot.is_none() {
                    *slot = Some(LocalLm::new(&cfg.model, &self.params, &Device::Cpu)?);
                }
                let local = slot
                    .as_mut()
                    .ok_or_else(|| crate::error::Error::Model("no trainer".into()))?;
                local.train_round(&self.params, shard, &train, &cfg.lm_rounds, r, &mut rng)?
            } else {
                train_local_with_noise(
                    &cfg.model,
                    &self.params,
                    shard,
                    &train,
                    &mut rng,
                    noise.as_mut(),
                    &Device::Cpu,
                )?
            };
            samples.push(if i < byz {
                attack.claimed_samples(out.samples)
            } else {
                out.samples
            });
            if cfg.secure_aggregation.is_some() {
                // Masked below; the same guard against a diverged delta as `prepare_update`.
                let mut delta = out.delta;
                if delta.iter().any(|v| !v.is_finite()) {
                    delta.iter_mut().for_each(|v| *v = 0.0);
                }
                plain.push(delta);
                honest_loss += f64::from(out.mean_loss);
                honest += 1;
                continue;
            }
            if i < byz && !attack.is_data_level() {
                // Model-level attackers corrupt after seeing the honest deltas (below).
                raw_byz.push((i, out.delta));
                sent.push(None);
                continue;
            }
            let bytes = prepare_update(
                out.delta,
                cfg.dp.as_ref(),
                cfg.compression,
                cfg.error_feedback.then_some(&mut self.residuals[i]),
                &mut rng,
            );
            if i >= byz {
                honest_bytes += bytes.len();
                honest_loss += f64::from(out.mean_loss);
                honest += 1;
            }
            sent.push(decode(&bytes, n_params).ok());
        }
        let mut corrupted = Vec::new();
        if !raw_byz.is_empty() {
            let benign_refs: Vec<&[f32]> =
                sent[byz..].iter().flatten().map(Vec::as_slice).collect();
            for (i, honest_delta) in raw_byz {
                let mut rng = Rng::derive(cfg.seed ^ 0xBAD, (r << 20) | i as u64);
                let bad = attack.corrupt(&honest_delta, &benign_refs, cfg.nodes, byz, &mut rng);
                corrupted.push((i, decode(&encode(cfg.compression, &bad), n_params).ok()));
            }
        }
        for (i, d) in corrupted {
            sent[i] = d;
        }
        let inputs: Vec<Contribution<'_>> = sent
            .iter()
            .zip(&samples)
            .filter_map(|(d, &s)| {
                d.as_ref().map(|d| Contribution {
                    delta: d,
                    samples: s,
                })
            })
            .collect();
        let mut clamped = 0;
        if let Some(sa) = cfg.secure_aggregation {
            let all: Vec<usize> = (0..cfg.nodes).collect();
            let domain = Domain::new("cohort simulate", r);
            let m = masked_mean(&domain, cfg.seed, &plain, &samples, &all, sa.bound)?;
            server_step(
                &mut self.params,
                &mut self.velocity,
                &cfg.server.at_round(r),
                self.lowpass.as_ref(),
                &m.mean,
            )?;
            clamped = m.clamped;
            honest_bytes = m.bytes_per_member * honest;
        } else if !inputs.is_empty() {
            apply_round(
                &mut self.params,
                &mut self.velocity,
                &cfg.rule,
                &cfg.server.at_round(r),
                self.lowpass.as_ref(),
                &inputs,
            )?;
        }
        if let Some(d) = cfg.ema {
            update_average(&mut self.average, &self.params, d);
        }
        let evaluate_now = self.round.is_multiple_of(cfg.eval_every.max(1));
        let (dp, dp_sgd, work) = (cfg.dp, cfg.train.dp_sgd, cfg.train.work);
        let (accuracy, loss) = if evaluate_now {
            let (a, l) = self.evaluate()?;
            (Some(a), Some(l))
        } else {
            (None, None)
        };
        let epsilon = dp.filter(|d| d.noise > 0.0).map(|d| {
            Accountant {
                noise: d.noise,
                sampling_rate: 1.0,
            }
            .epsilon(r, 1e-5)
            .0
        });
        let record_epsilon = dp_sgd.filter(|d| d.noise > 0.0).map(|d| {
            Accountant {
                noise: d.noise,
                sampling_rate: d.rate,
            }
            .epsilon(r * d.steps(work) as u64, 1e-5)
            .0
        });
        let node_epsilon = cfg
            .secure_aggregation
            .and(train.dp_sgd)
            .filter(|d| d.noise > 0.0)
            .map(|d| {
                Accountant {
                    noise: d.noise,
                    sampling_rate: d.rate,
                }
                .epsilon(r * d.steps(cfg.train.work) as u64, 1e-5)
                .0
            });
        Ok(RoundReport {
            round: self.round,
            accuracy,
            loss,
            train_loss: (honest_loss / honest.max(1) as f64) as f32,
            bytes_per_node: honest_bytes / honest.max(1),
            dense_bytes: 5 + 4 * n_params,
            epsilon,
            record_epsilon,
            node_epsilon,
            clamped,
        })
    }

    /// Evaluates the current model on the test set.
    pub fn evaluate(&self) -> Result<(f32, f32)> {
        let params = if self.average.is_empty() {
            &self.params
        } else {
            &self.average
        };
        match &self.eval_model {
            Some(m) => {
                m.set_flat(params)?;
                evaluate(m, &self.test)
            }
            None => evaluate_params(&self.cfg.model, params, &self.test),
        }
    }
}

/// `average = d average + (1 - d) params` in f64 rounded to f32; the first call copies `params`.
fn update_average(average: &mut Vec<f32>, params: &[f32], d: f64) {
    if average.len() != params.len() {
        *average = params.to_vec();
        return;
    }
    for (a, p) in average.iter_mut().zip(params) {
        *a = (d * f64::from(*a) + (1.0 - d) * f64::from(*p)) as f32;
    }
}

/// Refuses what secure aggregation cannot run with: only the plain weighted mean can be
/// unmasked (no robust rule, no pre-step), no compression, no Byzantine nodes (the threat model is
/// honest-but-curious), node-level DP's per-node noise is not the distributed kind, and DP-SGD
/// needs one local step per round (see the module doc).
fn check_secure_aggregation(cfg: &SimConfig) -> Result<()> {
    let Some(sa) = cfg.secure_aggregation else {
        return Ok(());
    };
    let what = if cfg.rule != Aggregator::from(crate::aggregate::Rule::Mean) {
        "allows only the mean rule: robust rules need to see individual deltas"
    } else if cfg.compression != Compression::Dense {
        "sums dense fixed-point vectors: no compression"
    } else if cfg.byzantine.is_some() {
        "assumes honest-but-curious members: no Byzantine nodes"
    } else if cfg.dp.is_some() {
        "adds distributed noise with --dp-sgd; node-level --dp is not supported with it"
    } else if cfg.train.dp_sgd.is_some() && cfg.train.work != crate::train::Work::Steps(1) {
        "with DP-SGD needs exactly 1 local step per round: later local steps depend on a \
         node's own noise share only, so the sum would not carry sigma per step"
    } else if sa.honest == 0 || sa.honest > cfg.nodes {
        "needs 1 <= honest nodes t <= nodes"
    } else {
        return Ok(());
    };
    Err(SecAggError::Unsupported { what: what.into() }.into())
}

/// What a node does to its fresh delta before signing it: DP clip and noise (if configured), then
/// compression, with error feedback when a residual is given.
pub fn prepare_update(
    mut delta: Vec<f32>,
    dp: Option<&DpConfig>,
    compression: Compression,
    residual: Option<&mut Vec<f32>>,
    rng: &mut Rng,
) -> Vec<u8> {
    // Training from a diverged model (a poisoned mean) overflows; a non-finite delta would be
    // refused by every peer and aggregation, so the round could never gather a quorum. Send no
    // change instead: rounds go on, the damage stays visible in the accuracy.
    if delta.iter().any(|v| !v.is_finite()) {
        delta.iter_mut().for_each(|v| *v = 0.0);
    }
    if let Some(dp) = dp {
        privatise(&mut delta, dp, rng);
    }
    match residual {
        Some(res) => encode_with_feedback(compression, &delta, res),
        None => encode(compression, &delta),
    }
}

/// The commit step: `theta += server_step(lowpass(rule(inputs)))`, deterministic for inputs in
/// a fixed order. Returns the rule's aggregate (before the low-pass filter).
pub fn apply_round(
    params: &mut [f32],
    velocity: &mut Vec<f32>,
    rule: &Aggregator,
    server: &ServerOpt,
    lowpass: Option<&LowPass>,
    inputs: &[Contribution<'_>],
) -> Result<Vec<f32>> {
    let agg = rule.aggregate(inputs)?;
    server_step(params, velocity, server, lowpass, &agg)?;
    Ok(agg)
}

/// `theta += server_step(lowpass(aggregate))`: the server step on the aggregate, its first
/// layer low-passed first when a filter is given.
pub fn server_step(
    params: &mut [f32],
    velocity: &mut Vec<f32>,
    server: &ServerOpt,
    lowpass: Option<&LowPass>,
    aggregate: &[f32],
) -> Result<()> {
    match lowpass {
        Some(lp) => {
            let mut filtered = aggregate.to_vec();
            lp.apply(&mut filtered)?;
            server.step(params, velocity, &filtered)
        }
        None => server.step(params, velocity, aggregate),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_finite_delta_is_sent_as_no_change() {
        let mut rng = Rng::seed(1);
        let bytes = prepare_update(
            vec![1.0, f32::NAN, 2.0],
            None,
            Compression::Dense,
            None,
            &mut rng,
        );
        assert_eq!(crate::codec::decode(&bytes, 3).unwrap(), vec![0.0; 3]);
        let bytes = prepare_update(vec![1.0, 2.0], None, Compression::Dense, None, &mut rng);
        assert_eq!(crate::codec::decode(&bytes, 2).unwrap(), vec![1.0, 2.0]);
    }
    use crate::aggregate::Rule;
    use crate::train::{Optimizer, Work};

    fn base(seed: u64) -> SimConfig {
        SimConfig {
            model: ModelSpec::digits_mlp(),
            nodes: 4,
            partition: Partition::Dirichlet(0.5),
            train: TrainConfig {
                work: Work::Epochs(1),
                batch: 16,
                optimizer: Optimizer::Sgd {
                    lr: 0.1,
                    momentum: 0.5,
                },
                prox_mu: 0.0,
                dp_sgd: None,
            },
            lm_rounds: LmRounds::default(),
            rule: Rule::Mean.into(),
            server: ServerOpt::default(),
            compression: Compression::Dense,
            error_feedback: true,
            dp: None,
            byzantine: None,
            secure_aggregation: None,
            seed,
            eval_every: 1,
            ema: None,
            lowpass: None,
        }
    }

    #[test]
    fn the_commit_step_low_passes_only_the_first_layers_update() {
        let spec = ModelSpec::digits_mlp();
        let lp = LowPass::for_model(&spec, 3).unwrap();
        let n = spec.num_params();
        let mut rng = Rng::seed(3);
        let delta: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        let step = |lowpass: Option<&LowPass>| {
            let mut params = vec![0.0f32; n];
            let agg = apply_round(
                &mut params,
                &mut Vec::new(),
                &Rule::Mean.into(),
                &ServerOpt::default(),
                lowpass,
                &[Contribution {
                    delta: &delta,
                    samples: 1,
                }],
            )
            .unwrap();
            assert_eq!(agg, delta, "the rule's aggregate is returned unfiltered");
            params
        };
        assert_eq!(step(None), delta);
        let mut want = delta.clone();
        lp.apply(&mut want).unwrap();
        let got = step(Some(&lp));
        assert_eq!(got, want);
        let changed = got.iter().zip(&delta).filter(|(a, b)| a != b).count();
        // (Nearly) all of fc1.weight moves, nothing else does.
        let fc1 = spec
            .layout()
            .iter()
            .find(|p| p.name == "fc1.weight")
            .map(|p| p.numel())
            .unwrap();
        assert!(
            changed > fc1 * 9 / 10 && changed <= fc1,
            "{changed} of {fc1} changed"
        );
    }

    #[test]
    fn a_simulation_low_passes_its_first_layer_or_refuses_a_filter_that_cannot_fit() {
        let split = crate::data::digits().unwrap();
        let mut sim = Simulation::new(
            SimConfig {
                lowpass: Some(4),
                ..base(2)
            },
            &split,
        )
        .unwrap();
        let init = sim.params().to_vec();
        sim.step().unwrap();
        // The first layer moved only within its 4 x 4 lowest frequencies: projecting its
        // change again leaves it as it is.
        let lp = LowPass::for_model(&ModelSpec::digits_mlp(), 4).unwrap();
        let change: Vec<f32> = sim.params().iter().zip(&init).map(|(a, b)| a - b).collect();
        let mut again = change.clone();
        lp.apply(&mut again).unwrap();
        for (a, b) in change.iter().zip(&again) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert!(change.iter().any(|v| *v != 0.0));
        for k in [0, 9] {
            let bad = SimConfig {
                lowpass: Some(k),
                ..base(2)
            };
            assert!(Simulation::new(bad, &split).is_err(), "k {k}");
        }
    }

    /// The filter is post-processing of what was released: under DP-SGD the accountant's
    /// epsilon is the same with it and without it, while the model it commits differs.
    #[test]
    fn the_low_pass_filter_spends_no_privacy() {
        let split = crate::data::digits().unwrap();
        let dp = |lowpass| {
            let mut cfg = SimConfig { lowpass, ..base(4) };
            cfg.train.dp_sgd = Some(crate::dpsgd::DpSgdConfig {
                clip: 1.0,
                noise: 1.0,
                rate: 0.1,
            });
            let mut sim = Simulation::new(cfg, &split).unwrap();
            let reports = [sim.step().unwrap(), sim.step().unwrap()];
            (reports.map(|r| r.record_epsilon), sim.params().to_vec())
        };
        let (eps_off, params_off) = dp(None);
        let (eps_on, params_on) = dp(Some(4));
        assert!(
            eps_off.iter().all(|e| e.is_some_and(|e| e > 0.0)),
            "{eps_off:?}"
        );
        assert_eq!(eps_on, eps_off);
        assert_ne!(params_on, params_off);
    }

    fn run(cfg: SimConfig, rounds: usize) -> (f32, Vec<f32>, usize) {
        let split = crate::data::digits().unwrap();
        let mut sim = Simulation::new(cfg, &split).unwrap();
        let mut last = None;
        for _ in 0..rounds {
            last = Some(sim.step().unwrap());
        }
        let last = last.unwrap();
        (
            last.accuracy.unwrap(),
            sim.params().to_vec(),
            last.bytes_per_node,
        )
    }

    #[test]
    fn federated_digits_learns_and_is_reproducible() {
        let (acc, p1, bytes) = run(base(1), 8);
        assert!(acc > 0.9, "accuracy {acc}");
        assert_eq!(bytes, 5 + 4 * 4810);
        let (_, p2, _) = run(base(1), 8);
        assert_eq!(
            crate::params::hash_params(&p1),
            crate::params::hash_params(&p2)
        );
    }

    #[test]
    fn sign_flip_breaks_mean_but_not_median() {
        let attack = Some((1, Attack::SignFlip { scale: 10.0 }));
        let (mean_acc, _, _) = run(
            SimConfig {
                byzantine: attack,
                nodes: 5,
                partition: Partition::Iid,
                ..base(2)
            },
            6,
        );
        let (median_acc, _, _) = run(
            SimConfig {
                byzantine: attack,
                nodes: 5,
                rule: Rule::Median.into(),
                partition: Partition::Iid,
                ..base(2)
            },
            6,
        );
        assert!(mean_acc < 0.5, "mean under attack {mean_acc}");
        assert!(median_acc > 0.85, "median under attack {median_acc}");
    }

    #[test]
    fn compression_cuts_bytes() {
        let (acc, _, bytes) = run(
            SimConfig {
                compression: Compression::TopKInt8(0.1),
                ..base(3)
            },
            8,
        );
        assert!(bytes * 10 < 5 + 4 * 4810, "{bytes}");
        assert!(acc > 0.85, "accuracy {acc}");
    }

    #[test]
    fn dp_reports_epsilon() {
        let split = crate::data::digits().unwrap();
        let mut sim = Simulation::new(
            SimConfig {
                dp: Some(DpConfig {
                    clip: 1.0,
                    noise: 0.5,
                }),
                ..base(4)
            },
            &split,
        )
        .unwrap();
        let r1 = sim.step().unwrap();
        let r2 = sim.step().unwrap();
        assert!(r2.epsilon.unwrap() > r1.epsilon.unwrap());
    }

    #[test]
    fn dp_sgd_trains_and_reports_record_epsilon() {
        let split = crate::data::digits().unwrap();
        let mut cfg = base(5);
        cfg.train.dp_sgd = Some(crate::dpsgd::DpSgdConfig {
            clip: 1.0,
            noise: 1.0,
            rate: 0.1,
        });
        let mut sim = Simulation::new(cfg.clone(), &split).unwrap();
        let r1 = sim.step().unwrap();
        let r2 = sim.step().unwrap();
        assert_eq!(r1.epsilon, None);
        let (e1, e2) = (r1.record_epsilon.unwrap(), r2.record_epsilon.unwrap());
        // One epoch at q = 0.1 is 10 steps a round.
        let acc = Accountant {
            noise: 1.0,
            sampling_rate: 0.1,
        };
        assert_eq!(e2, acc.epsilon(20, 1e-5).0);
        assert!(e2 > e1);
        assert!(r2.train_loss.is_finite());
        // Reproducible from the seed.
        let mut again = Simulation::new(cfg, &split).unwrap();
        again.step().unwrap();
        again.step().unwrap();
        assert_eq!(again.params(), sim.params());
    }

    fn secagg(honest: usize) -> Option<SecAggConfig> {
        Some(SecAggConfig { honest, bound: 1.0 })
    }

    #[test]
    fn secure_aggregation_equals_the_plain_mean_within_quantisation() {
        // Equal IID shards: the plain rule's sample weights equal the masked mean's.
        let cfg = SimConfig {
            partition: Partition::Iid,
            ..base(6)
        };
        let split = crate::data::digits().unwrap();
        let mut plain = Simulation::new(cfg.clone(), &split).unwrap();
        let mut masked = Simulation::new(
            SimConfig {
                secure_aggregation: secagg(4),
                ..cfg
            },
            &split,
        )
        .unwrap();
        for _ in 0..2 {
            let (p, m) = (plain.step().unwrap(), masked.step().unwrap());
            assert_eq!(m.clamped, 0);
            assert!((p.accuracy.unwrap() - m.accuracy.unwrap()).abs() < 0.01);
        }
        let q = crate::secagg::Quantizer::new(1.0, 4).unwrap();
        let worst = plain
            .params()
            .iter()
            .zip(masked.params())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        // Quantisation (4 members: 3.7e-9) plus f32 rounding of the weighted deltas and sums.
        assert!(f64::from(worst) < 100.0 * q.sum_error(4) + 1e-6, "{worst}");
        assert_ne!(plain.params(), &cfg_init(6)[..]);
    }

    /// The evaluated average follows `avg = d avg + (1 - d) theta` from the first round's
    /// parameters, while the committed parameters stay those of the plain run.
    #[test]
    fn the_evaluated_average_is_the_ema_of_the_committed_parameters() {
        let split = crate::data::digits().unwrap();
        let cfg = base(3);
        let mut plain = Simulation::new(cfg.clone(), &split).unwrap();
        let mut avg = Simulation::new(
            SimConfig {
                ema: Some(0.5),
                ..cfg
            },
            &split,
        )
        .unwrap();
        let mut expect: Vec<f32> = Vec::new();
        for round in 0..3 {
            plain.step().unwrap();
            let report = avg.step().unwrap();
            assert_eq!(plain.params(), avg.params(), "round {round}");
            expect = if expect.is_empty() {
                plain.params().to_vec()
            } else {
                expect
                    .iter()
                    .zip(plain.params())
                    .map(|(a, p)| (0.5 * f64::from(*a) + 0.5 * f64::from(*p)) as f32)
                    .collect()
            };
            assert_eq!(avg.average, expect, "round {round}");
            let m = Model::new(&avg.cfg.model, &expect, &Device::Cpu).unwrap();
            let (acc, _) = evaluate(&m, &avg.test).unwrap();
            assert_eq!(report.accuracy, Some(acc), "round {round}");
        }
        assert_ne!(avg.average, plain.params(), "the average lags the model");
    }

    fn cfg_init(seed: u64) -> Vec<f32> {
        ModelSpec::digits_mlp().init(seed)
    }

    /// One round of DP-SGD with (almost) no records sampled: the masked mean is the noise alone,
    /// `-lr sum_i Z_i / (q N)` with `Z_i ~ N(0, (sigma C)^2 / t)` on each of the `n` nodes.
    fn noise_only_std(nodes_honest: usize) -> (f64, f64) {
        let split = crate::data::digits().unwrap();
        let (sigma, clip, rate, lr) = (4.0, 1.0, 1e-3, 1e-4);
        let mut cfg = base(8);
        cfg.train.work = Work::Steps(1);
        cfg.train.optimizer = Optimizer::Sgd { lr, momentum: 0.0 };
        cfg.train.dp_sgd = Some(crate::dpsgd::DpSgdConfig {
            clip,
            noise: sigma,
            rate,
        });
        cfg.secure_aggregation = secagg(nodes_honest);
        let mut sim = Simulation::new(cfg, &split).unwrap();
        let n_total: usize = sim.shards().iter().map(|s| s.len()).sum();
        let before = sim.params().to_vec();
        let rep = sim.step().unwrap();
        assert_eq!(rep.clamped, 0);
        let d: Vec<f64> = sim
            .params()
            .iter()
            .zip(&before)
            .map(|(a, b)| f64::from(a - b))
            .collect();
        let mean = d.iter().sum::<f64>() / d.len() as f64;
        let std = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / d.len() as f64).sqrt();
        let centralized = lr * sigma * clip / (rate * n_total as f64);
        (std, centralized)
    }

    #[test]
    fn distributed_noise_shares_add_up_to_sigma_on_the_sum() {
        // t = n = 4: each node adds sigma / 2, the mean carries exactly centralized DP-SGD's
        // noise sigma C / (q N). (Each node adding sigma would give twice that.)
        let (std, want) = noise_only_std(4);
        assert!((std / want - 1.0).abs() < 0.05, "{std} vs {want}");
        // t = 1: every node adds the full sigma, so 4 nodes give sqrt(4) = 2 times sigma.
        let (std, want) = noise_only_std(1);
        assert!((std / want - 2.0).abs() < 0.1, "{std} vs {want}");
    }

    #[test]
    fn distributed_dp_sgd_reports_the_sums_epsilon_and_refuses_local_steps() {
        let split = crate::data::digits().unwrap();
        let dp = crate::dpsgd::DpSgdConfig {
            clip: 1.0,
            noise: 2.0,
            rate: 0.05,
        };
        let mut cfg = base(9);
        cfg.train.dp_sgd = Some(dp);
        cfg.secure_aggregation = secagg(4);
        // One epoch at q = 0.05 is 20 local steps: refused.
        let err = Simulation::new(cfg.clone(), &split).err().unwrap();
        assert!(err.to_string().contains("1 local step"), "{err}");
        cfg.train.work = Work::Steps(1);
        let mut sim = Simulation::new(cfg, &split).unwrap();
        sim.step().unwrap();
        let r2 = sim.step().unwrap();
        let sum = Accountant {
            noise: 2.0,
            sampling_rate: 0.05,
        };
        let share = Accountant {
            noise: 1.0,
            sampling_rate: 0.05,
        };
        assert_eq!(r2.record_epsilon, Some(sum.epsilon(2, 1e-5).0));
        assert_eq!(r2.node_epsilon, Some(share.epsilon(2, 1e-5).0));
        assert!(r2.node_epsilon > r2.record_epsilon);
    }

    #[test]
    fn secure_aggregation_refuses_what_it_cannot_sum() {
        let split = crate::data::digits().unwrap();
        let ok = SimConfig {
            secure_aggregation: secagg(4),
            ..base(10)
        };
        assert!(Simulation::new(ok.clone(), &split).is_ok());
        let bad = [
            SimConfig {
                rule: Rule::Median.into(),
                ..ok.clone()
            },
            SimConfig {
                compression: Compression::Int8,
                ..ok.clone()
            },
            SimConfig {
                byzantine: Some((1, Attack::Zeros)),
                ..ok.clone()
            },
            SimConfig {
                dp: Some(DpConfig {
                    clip: 1.0,
                    noise: 1.0,
                }),
                ..ok.clone()
            },
            SimConfig {
                secure_aggregation: secagg(0),
                ..ok.clone()
            },
            SimConfig {
                secure_aggregation: secagg(5),
                ..ok.clone()
            },
        ];
        for cfg in bad {
            let err = Simulation::new(cfg, &split).err().unwrap();
            assert!(matches!(err, crate::Error::SecAgg(_)), "{err}");
        }
    }
}
