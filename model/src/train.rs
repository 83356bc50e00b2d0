//! Local training and evaluation with candle. On the CPU the MLPs train through the hand-written
//! pass of [`crate::fast`] and the CNNs through [`crate::fast_cnn`] (but under DP-SGD); everything
//! else through candle's autograd.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer as _, ParamsAdamW};

use crate::data::Dataset;
use crate::dpsgd::{DpSgdConfig, NoiseSource, clip_factor};
use crate::error::{Error, Result, parse_err};
use crate::net::{Model, ModelSpec};
use crate::rng::Rng;

/// The local optimiser.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Optimizer {
    /// SGD with (heavy-ball) momentum; momentum 0 is plain SGD.
    Sgd {
        /// Learning rate.
        lr: f64,
        /// Momentum coefficient.
        momentum: f64,
    },
    /// Adam (beta1 0.9, beta2 0.999, eps 1e-8, no weight decay).
    Adam {
        /// Learning rate.
        lr: f64,
    },
}

/// The largest learning rate a configuration may name (local or server): anything above it
/// diverges on every model this crate trains.
pub const MAX_LR: f64 = 10.0;

impl Optimizer {
    /// Checks the ranges: a learning rate finite in `(0, MAX_LR]`, a momentum in `[0, 1)`. A
    /// zero rate never moves the model; `1e30` turns it into infinities that every server step
    /// refuses; momentum `>= 1` never forgets and diverges.
    pub fn validate(&self) -> Result<()> {
        let (lr, momentum) = match *self {
            Self::Sgd { lr, momentum } => (lr, momentum),
            Self::Adam { lr } => (lr, 0.0),
        };
        let why = if !(lr.is_finite() && lr > 0.0 && lr <= MAX_LR) {
            format!("learning rate {lr:?} must be finite and in (0, {MAX_LR}]")
        } else if !(momentum.is_finite() && (0.0..1.0).contains(&momentum)) {
            format!("momentum {momentum:?} must be in [0, 1)")
        } else {
            return Ok(());
        };
        Err(parse_err("optimizer", &self.to_string(), why))
    }
}

impl std::str::FromStr for Optimizer {
    type Err = Error;
    /// `sgd:LR`, `sgd:LR,MOMENTUM` or `adam:LR`, range-checked ([`Optimizer::validate`]).
    fn from_str(s: &str) -> Result<Self> {
        let (name, arg) = s.split_once(':').unwrap_or((s, ""));
        let v: Vec<f64> = arg
            .split(',')
            .filter(|x| !x.is_empty())
            .map(|x| x.trim().parse::<f64>().ok())
            .collect::<Option<_>>()
            .ok_or_else(|| parse_err("optimizer", s, "bad number"))?;
        let opt = match name {
            "sgd" if v.len() <= 2 => Self::Sgd {
                lr: v.first().copied().unwrap_or(0.05),
                momentum: v.get(1).copied().unwrap_or(0.0),
            },
            "adam" if v.len() <= 1 => Self::Adam {
                lr: v.first().copied().unwrap_or(1e-3),
            },
            _ => {
                return Err(parse_err(
                    "optimizer",
                    s,
                    "expected sgd:LR[,MOMENTUM] or adam:LR",
                ));
            }
        };
        opt.validate().map_err(|e| match e {
            Error::Parse { why, .. } => parse_err("optimizer", s, why),
            other => other,
        })?;
        Ok(opt)
    }
}

impl std::fmt::Display for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sgd { lr, momentum } => write!(f, "sgd:{lr},{momentum}"),
            Self::Adam { lr } => write!(f, "adam:{lr}"),
        }
    }
}

/// How much local work one round does.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Work {
    /// Whole passes over the local data.
    Epochs(usize),
    /// A fixed number of minibatch steps (the data is cycled, reshuffled on every pass).
    Steps(usize),
}

/// Local training settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// Epochs or steps per round.
    pub work: Work,
    /// Minibatch size.
    pub batch: usize,
    /// The local optimiser (its state is reset every round).
    pub optimizer: Optimizer,
    /// FedProx proximal weight `mu` (0 disables): adds `mu/2 * ||w - w_global||^2` to the loss.
    pub prox_mu: f64,
    /// Record-level DP-SGD (Poisson sampling, per-example clipping, Gaussian noise; see
    /// [`crate::dpsgd`]) instead of minibatch training; `batch` is then unused. Training with it
    /// needs a secret [`NoiseSource`] ([`train_local_with_noise`]).
    #[serde(default)]
    pub dp_sgd: Option<DpSgdConfig>,
}

/// What a round of local training produced.
#[derive(Debug, Clone)]
pub struct TrainOutput {
    /// `theta_local - theta_global`, canonical order.
    pub delta: Vec<f32>,
    /// Local training samples (the FedAvg weight).
    pub samples: u64,
    /// Mean minibatch loss over the round.
    pub mean_loss: f32,
    /// Minibatch steps taken.
    pub steps: usize,
}

/// Copies the rows `idx` of `data` into a batch tensor and a label tensor.
pub fn batch_tensors(data: &Dataset, idx: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
    let f = data.features;
    let mut x = Vec::with_capacity(idx.len() * f);
    let mut y = Vec::with_capacity(idx.len());
    for &i in idx {
        data.extend_row(i, &mut x);
        y.push(u32::from(data.y[i]));
    }
    Ok((
        Tensor::from_vec(x, (idx.len(), f), device)?,
        Tensor::from_vec(y, idx.len(), device)?,
    ))
}

/// Trains a copy of `global` on `data` and returns the delta. The batch order comes from `rng`.
///
/// The MLP kinds on the CPU take the hand-written forward and backward pass in [`crate::fast`],
/// the CNNs (without DP-SGD) the one in [`crate::fast_cnn`]; everything else takes candle's
/// autograd ([`train_model_autograd`]). With `cfg.dp_sgd` set this fails with
/// [`Error::DpSgdWithoutSecret`]: use [`train_local_with_noise`].
pub fn train_local(
    kind: &ModelSpec,
    global: &[f32],
    data: &Dataset,
    cfg: &TrainConfig,
    rng: &mut Rng,
    device: &Device,
) -> Result<TrainOutput> {
    train_local_with_noise(kind, global, data, cfg, rng, None, device)
}

/// [`train_local`] with DP-SGD's secret randomness: when `cfg.dp_sgd` is set, every batch and
/// every noise draw comes from `noise` (then required; `rng` is unused), which the caller keys
/// with 32 secret bytes ([`NoiseSource::from_secret`]). Without `cfg.dp_sgd`, `noise` is unused.
pub fn train_local_with_noise(
    kind: &ModelSpec,
    global: &[f32],
    data: &Dataset,
    cfg: &TrainConfig,
    rng: &mut Rng,
    noise: Option<&mut NoiseSource>,
    device: &Device,
) -> Result<TrainOutput> {
    if kind.lm_config().is_some() {
        return crate::lm::train_local_lm(kind, global, data, cfg, rng, device);
    }
    let (mean_loss, steps, trained) = if device.is_cpu() && crate::fast::supports(kind) {
        let mut params = global.to_vec();
        let (loss, steps) = crate::fast::train(kind, &mut params, data, cfg, rng, noise, None)?;
        (loss, steps, params)
    } else if device.is_cpu() && cfg.dp_sgd.is_none() && crate::fast_cnn::supports(kind) {
        let mut params = global.to_vec();
        let (loss, steps) = crate::fast_cnn::train(kind, &mut params, data, cfg, rng, None)?;
        (loss, steps, params)
    } else {
        let model = Model::new(kind, global, device)?;
        let (loss, steps) = train_model_with_noise(&model, data, cfg, rng, noise, None)?;
        (loss, steps, model.flat()?)
    };
    let mut delta = trained;
    for (d, g) in delta.iter_mut().zip(global) {
        *d -= g;
    }
    Ok(TrainOutput {
        delta,
        samples: data.len() as u64,
        mean_loss,
        steps,
    })
}

/// The minibatch schedule shared by every training path: the batch size, the number of steps,
/// and the sample order, reshuffled from `rng` on every pass.
pub(crate) struct Batches {
    order: Vec<usize>,
    pos: usize,
    batch: usize,
    full_only: bool,
    /// Steps this round takes.
    pub(crate) total_steps: usize,
}

impl Batches {
    /// The schedule for `cfg` over `len` samples (`len` > 0).
    pub(crate) fn new(len: usize, cfg: &TrainConfig) -> Self {
        let batch = cfg.batch.clamp(1, len);
        let per_epoch = len.div_ceil(batch);
        let total_steps = match cfg.work {
            Work::Epochs(e) => e * per_epoch,
            Work::Steps(s) => s,
        };
        Batches {
            order: (0..len).collect(),
            pos: len,
            batch,
            full_only: matches!(cfg.work, Work::Steps(_)),
            total_steps,
        }
    }

    /// The largest batch this schedule yields.
    pub(crate) fn batch(&self) -> usize {
        self.batch
    }

    /// The sample indices of the next step. A new pass reshuffles. Counting epochs keeps an
    /// epoch's final short batch; counting steps only takes full batches.
    pub(crate) fn next(&mut self, rng: &mut Rng) -> &[usize] {
        if self.pos >= self.order.len()
            || (self.full_only && self.pos + self.batch > self.order.len())
        {
            rng.shuffle(&mut self.order);
            self.pos = 0;
        }
        let start = self.pos;
        self.pos = (start + self.batch).min(self.order.len());
        &self.order[start..self.pos]
    }
}

/// Checks that `data` fits `kind`; false when there is nothing to train on.
pub(crate) fn check_data(kind: &ModelSpec, data: &Dataset) -> Result<bool> {
    if data.is_empty() {
        return Ok(false);
    }
    if data.features != kind.input_features() {
        return Err(Error::WrongLength {
            got: data.features,
            expected: kind.input_features(),
        });
    }
    if let Some(&l) = data.y.iter().find(|&&l| usize::from(l) >= kind.classes()) {
        return Err(Error::Dataset(format!(
            "label {l} is not below the model's {} classes",
            kind.classes()
        )));
    }
    Ok(true)
}

enum OptState {
    Adam(AdamW),
    Sgd {
        lr: f64,
        momentum: f64,
        velocity: Vec<Option<Tensor>>,
    },
}

impl OptState {
    fn new(cfg: &TrainConfig, vars: &[Var]) -> Result<Self> {
        Ok(match cfg.optimizer {
            Optimizer::Adam { lr } => OptState::Adam(AdamW::new(
                vars.to_vec(),
                ParamsAdamW {
                    lr,
                    weight_decay: 0.0,
                    ..Default::default()
                },
            )?),
            Optimizer::Sgd { lr, momentum } => OptState::Sgd {
                lr,
                momentum,
                velocity: vec![None; vars.len()],
            },
        })
    }

    /// One optimiser step on `vars` with the gradients in `grads`.
    fn step(&mut self, vars: &[Var], grads: &GradStore) -> Result<()> {
        match self {
            OptState::Adam(opt) => opt.step(grads)?,
            OptState::Sgd {
                lr,
                momentum,
                velocity,
            } => {
                for (v, vel) in vars.iter().zip(velocity.iter_mut()) {
                    let Some(g) = grads.get(v.as_tensor()) else {
                        continue;
                    };
                    // Without detaching, each step's velocity holds the previous one and its
                    // gradient's backward graph: memory grew without bound (the CNN reached
                    // 24 GB in one epoch).
                    let g = g.detach();
                    let upd = if *momentum > 0.0 {
                        let nv = match vel.take() {
                            Some(old) => ((old * *momentum)? + g)?,
                            None => g,
                        };
                        let nv = nv.detach();
                        *vel = Some(nv.clone());
                        nv
                    } else {
                        g
                    };
                    v.set(&(v.as_tensor() - (upd * *lr)?)?)?;
                }
            }
        }
        Ok(())
    }
}

/// Trains `model` in place; returns (mean loss, steps). `progress` is called after every step with
/// (step, total steps) for progress bars. The MLP and CNN kinds on the CPU take the fast paths
/// ([`crate::fast`], [`crate::fast_cnn`]), the rest candle's autograd ([`train_model_autograd`]).
/// With `cfg.dp_sgd` set this fails with [`Error::DpSgdWithoutSecret`]: use
/// [`train_model_with_noise`].
pub fn train_model(
    model: &Model,
    data: &Dataset,
    cfg: &TrainConfig,
    rng: &mut Rng,
    progress: Option<&mut dyn FnMut(usize, usize)>,
) -> Result<(f32, usize)> {
    train_model_with_noise(model, data, cfg, rng, None, progress)
}

/// [`train_model`] with DP-SGD's secret randomness (see [`train_local_with_noise`]).
pub fn train_model_with_noise(
    model: &Model,
    data: &Dataset,
    cfg: &TrainConfig,
    rng: &mut Rng,
    noise: Option<&mut NoiseSource>,
    progress: Option<&mut dyn FnMut(usize, usize)>,
) -> Result<(f32, usize)> {
    let on_cpu = model.vars().first().is_none_or(|v| v.device().is_cpu());
    if on_cpu && crate::fast::supports(model.spec()) {
        return crate::fast::train_model(model, data, cfg, rng, noise, progress);
    }
    if on_cpu && cfg.dp_sgd.is_none() && crate::fast_cnn::supports(model.spec()) {
        return crate::fast_cnn::train_model(model, data, cfg, rng, progress);
    }
    train_model_autograd(model, data, cfg, rng, noise, progress)
}

/// [`train_model`] on candle's autograd for every model kind: the reference the fast path is
/// tested against, and the path for the CNN and non-CPU devices. With `cfg.dp_sgd` set it takes
/// [`train_model_autograd_dp`].
pub fn train_model_autograd(
    model: &Model,
    data: &Dataset,
    cfg: &TrainConfig,
    rng: &mut Rng,
    noise: Option<&mut NoiseSource>,
    mut progress: Option<&mut dyn FnMut(usize, usize)>,
) -> Result<(f32, usize)> {
    if let Some((dp, noise)) = crate::dpsgd::resolve(cfg, noise)? {
        return train_model_autograd_dp(model, data, cfg, &dp, noise, progress);
    }
    if !check_data(model.spec(), data)? {
        return Ok((0.0, 0));
    }
    let mut batches = Batches::new(data.len(), cfg);
    let total_steps = batches.total_steps;
    let vars = model.vars().to_vec();
    let device = vars
        .first()
        .map(|v| v.device().clone())
        .unwrap_or(Device::Cpu);
    // Snapshot of the starting point for FedProx.
    let anchors = prox_anchors(&vars, cfg)?;
    let mut state = OptState::new(cfg, &vars)?;
    let mut loss_sum = 0.0f64;
    for step in 0..total_steps {
        let (xs, ys) = batch_tensors(data, batches.next(rng), &device)?;
        let logits = model.forward(&xs)?;
        let mut loss = model.loss(&logits, &ys)?;
        loss_sum += f64::from(loss.to_scalar::<f32>()?);
        if cfg.prox_mu > 0.0 {
            let mut prox = Tensor::zeros((), DType::F32, &device)?;
            for (v, a) in vars.iter().zip(&anchors) {
                prox = (prox + (v.as_tensor() - a)?.sqr()?.sum_all()?)?;
            }
            loss = (loss + (prox * (cfg.prox_mu / 2.0))?)?;
        }
        match &mut state {
            OptState::Adam(opt) => opt.backward_step(&loss)?,
            OptState::Sgd { .. } => state.step(&vars, &loss.backward()?)?,
        }
        if let Some(p) = progress.as_mut() {
            p(step + 1, total_steps);
        }
    }
    Ok(((loss_sum / total_steps.max(1) as f64) as f32, total_steps))
}

/// Detached copies of the variables, FedProx's anchor (empty without FedProx).
fn prox_anchors(vars: &[Var], cfg: &TrainConfig) -> Result<Vec<Tensor>> {
    if cfg.prox_mu <= 0.0 {
        return Ok(Vec::new());
    }
    Ok(vars
        .iter()
        .map(|v| v.as_tensor().copy().map(|t| t.detach()))
        .collect::<candle_core::Result<_>>()?)
}

/// DP-SGD ([`crate::dpsgd`]) on candle's autograd, for every model kind: each sampled record
/// takes its own forward and backward pass (a batch of one), its gradient over all variables is
/// clipped to L2 norm `C` and added to the sum; the sum gets `N(0, (sigma C)^2)` per coordinate,
/// is divided by `q N`, and FedProx's `mu (w - w_global)` is added before the optimiser step.
/// Exact, and about as slow as training at batch 1 (the fast MLP path computes the same clipped
/// sum with batched products; see `examples/train_speed.rs`). Returns (mean loss over the steps
/// that had a batch, steps).
pub fn train_model_autograd_dp(
    model: &Model,
    data: &Dataset,
    cfg: &TrainConfig,
    dp: &DpSgdConfig,
    noise: &mut NoiseSource,
    mut progress: Option<&mut dyn FnMut(usize, usize)>,
) -> Result<(f32, usize)> {
    dp.validate()?;
    if !check_data(model.spec(), data)? {
        return Ok((0.0, 0));
    }
    let total_steps = dp.steps(cfg.work);
    let expected_batch = dp.expected_batch(data.len());
    let vars = model.vars().to_vec();
    let device = vars
        .first()
        .map(|v| v.device().clone())
        .unwrap_or(Device::Cpu);
    let anchors = prox_anchors(&vars, cfg)?;
    let mut state = OptState::new(cfg, &vars)?;
    let mut sample = Vec::new();
    let (mut loss_sum, mut nonempty) = (0.0f64, 0usize);
    let mut sums: Vec<Vec<f32>> = vars.iter().map(|v| vec![0.0; v.elem_count()]).collect();
    for step in 0..total_steps {
        noise.poisson_sample(data.len(), dp.rate, &mut sample);
        sums.iter_mut().for_each(|s| s.fill(0.0));
        let mut batch_loss = 0.0f64;
        for &i in &sample {
            let (xs, ys) = batch_tensors(data, &[i], &device)?;
            let loss = model.loss(&model.forward(&xs)?, &ys)?;
            batch_loss += f64::from(loss.to_scalar::<f32>()?);
            let grads = loss.backward()?;
            let mut per_example = Vec::with_capacity(vars.len());
            for v in &vars {
                per_example.push(match grads.get(v.as_tensor()) {
                    Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
                    None => vec![0.0; v.elem_count()],
                });
            }
            let norm = per_example
                .iter()
                .map(|g| crate::dp::l2_norm(g).powi(2))
                .sum::<f64>()
                .sqrt();
            let f = clip_factor(norm, dp.clip) as f32;
            for (s, g) in sums.iter_mut().zip(&per_example) {
                s.iter_mut().zip(g).for_each(|(s, g)| *s += f * g);
            }
        }
        if !sample.is_empty() {
            loss_sum += batch_loss / sample.len() as f64;
            nonempty += 1;
        }
        // The privatised gradient, as a gradient store for the optimiser. candle has no public
        // constructor for one: the backward pass of a constant gives an empty store.
        let mut store = Tensor::new(0f32, &device)?.backward()?;
        let inv = (1.0 / expected_batch) as f32;
        for (k, (v, s)) in vars.iter().zip(sums.iter_mut()).enumerate() {
            noise.add_gaussian(s, dp.noise * dp.clip);
            s.iter_mut().for_each(|x| *x *= inv);
            let mut g = Tensor::from_slice(s, v.shape(), &device)?;
            if let Some(a) = anchors.get(k) {
                g = (g + ((v.as_tensor() - a)? * cfg.prox_mu)?)?;
            }
            store.insert(v.as_tensor(), g);
        }
        state.step(&vars, &store)?;
        if let Some(p) = progress.as_mut() {
            p(step + 1, total_steps);
        }
    }
    Ok(((loss_sum / nonempty.max(1) as f64) as f32, total_steps))
}

/// Samples evaluated per forward pass: small enough that a node's evaluation adds little to its
/// peak memory (250 MNIST rows are 0.8 MB of floats, the 1,000 used before were 3.1 MB), large
/// enough for efficient matrix products.
pub(crate) const EVAL_CHUNK: usize = 250;

/// Test accuracy (fraction in [0, 1]) and mean cross-entropy loss of `model` on `data`.
pub fn evaluate(model: &Model, data: &Dataset) -> Result<(f32, f32)> {
    if data.is_empty() {
        return Ok((0.0, 0.0));
    }
    let (correct, loss) = evaluate_sums(model, data)?;
    Ok((
        correct as f32 / data.len() as f32,
        (loss / data.len() as f64) as f32,
    ))
}

/// Correct predictions and summed cross-entropy loss of `model` on `data`.
pub(crate) fn evaluate_sums(model: &Model, data: &Dataset) -> Result<(usize, f64)> {
    let device = model
        .vars()
        .first()
        .map(|v| v.device().clone())
        .unwrap_or(Device::Cpu);
    let mut correct = 0usize;
    let mut loss = 0.0f64;
    let idx: Vec<usize> = (0..data.len()).collect();
    for chunk in idx.chunks(EVAL_CHUNK) {
        let (xs, ys) = batch_tensors(data, chunk, &device)?;
        let logits = model.forward(&xs)?;
        loss += f64::from(model.loss(&logits, &ys)?.to_scalar::<f32>()?) * chunk.len() as f64;
        correct += model.correct(&logits, &ys)?;
    }
    Ok((correct, loss))
}

/// Evaluates flat parameters of `kind` on `data`.
pub fn evaluate_params(kind: &ModelSpec, params: &[f32], data: &Dataset) -> Result<(f32, f32)> {
    if kind.lm_config().is_some() {
        return crate::lm::evaluate_lm_params(kind, params, data);
    }
    let model = Model::new(kind, params, &Device::Cpu)?;
    evaluate(&model, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(opt: Optimizer, prox: f64) -> TrainConfig {
        TrainConfig {
            work: Work::Epochs(8),
            batch: 32,
            optimizer: opt,
            prox_mu: prox,
            dp_sgd: None,
        }
    }

    #[test]
    fn optimizer_strings_are_range_checked() {
        let ok = |s: &str| s.parse::<Optimizer>().unwrap();
        assert_eq!(
            ok("sgd:0.1,0.9"),
            Optimizer::Sgd {
                lr: 0.1,
                momentum: 0.9
            }
        );
        assert_eq!(
            ok("sgd:0.05"),
            Optimizer::Sgd {
                lr: 0.05,
                momentum: 0.0
            }
        );
        assert_eq!(ok("adam:1e-3"), Optimizer::Adam { lr: 1e-3 });
        assert_eq!(
            ok("sgd:10"),
            Optimizer::Sgd {
                lr: 10.0,
                momentum: 0.0
            }
        );
        let why = |s: &str| s.parse::<Optimizer>().unwrap_err().to_string();
        for (bad, says) in [
            (
                "sgd:1e30",
                "learning rate 1e30 must be finite and in (0, 10]",
            ),
            ("sgd:0", "learning rate 0.0 must be finite and in (0, 10]"),
            (
                "sgd:-0.1",
                "learning rate -0.1 must be finite and in (0, 10]",
            ),
            ("sgd:NaN", "learning rate NaN must be finite and in (0, 10]"),
            ("sgd:inf", "learning rate inf must be finite and in (0, 10]"),
            (
                "adam:10.5",
                "learning rate 10.5 must be finite and in (0, 10]",
            ),
            ("sgd:0.1,1", "momentum 1.0 must be in [0, 1)"),
            ("sgd:0.1,-0.5", "momentum -0.5 must be in [0, 1)"),
            ("sgd:0.1,NaN", "momentum NaN must be in [0, 1)"),
            ("sgd:0.1,x", "bad number"),
            ("sgd:0.1,0.9,3", "expected sgd:LR[,MOMENTUM] or adam:LR"),
            ("adam:0.1,0.9", "expected sgd:LR[,MOMENTUM] or adam:LR"),
            ("rmsprop:0.1", "expected sgd:LR[,MOMENTUM] or adam:LR"),
        ] {
            let got = why(bad);
            assert!(got.contains(says), "{bad}: {got}");
            assert!(got.contains(&format!("'{bad}'")), "{bad}: {got}");
        }
        // A deserialised optimiser bypasses the parser; validate() is the same check.
        assert!(Optimizer::Adam { lr: 0.0 }.validate().is_err());
        assert!(Optimizer::Adam { lr: 0.01 }.validate().is_ok());
    }

    #[test]
    fn sgd_and_adam_learn_digits() {
        let split = crate::data::digits().unwrap();
        let kind = &ModelSpec::digits_mlp();
        let init = kind.init(1);
        for opt in [
            Optimizer::Sgd {
                lr: 0.1,
                momentum: 0.9,
            },
            Optimizer::Adam { lr: 0.005 },
        ] {
            let before = evaluate_params(kind, &init, &split.test).unwrap();
            let out = train_local(
                kind,
                &init,
                &split.train,
                &cfg(opt, 0.0),
                &mut Rng::seed(3),
                &Device::Cpu,
            )
            .unwrap();
            assert_eq!(out.samples, split.train.len() as u64);
            assert_eq!(out.steps, 8 * split.train.len().div_ceil(32));
            let trained: Vec<f32> = init.iter().zip(&out.delta).map(|(a, b)| a + b).collect();
            let after = evaluate_params(kind, &trained, &split.test).unwrap();
            assert!(after.0 > 0.9, "{opt}: accuracy {}", after.0);
            assert!(
                after.1 < before.1,
                "{opt}: loss {} -> {}",
                before.1,
                after.1
            );
        }
    }

    #[test]
    fn fedprox_keeps_the_delta_smaller() {
        let split = crate::data::digits().unwrap();
        let kind = &ModelSpec::digits_mlp();
        let init = kind.init(1);
        let sgd = Optimizer::Sgd {
            lr: 0.1,
            momentum: 0.0,
        };
        let norm = |prox| {
            let out = train_local(
                kind,
                &init,
                &split.train,
                &cfg(sgd, prox),
                &mut Rng::seed(3),
                &Device::Cpu,
            )
            .unwrap();
            crate::dp::l2_norm(&out.delta)
        };
        let free = norm(0.0);
        let held = norm(1.0);
        assert!(held < free * 0.9, "{held} vs {free}");
    }

    #[test]
    fn step_budget_is_exact() {
        let split = crate::data::digits().unwrap();
        let kind = &ModelSpec::digits_mlp();
        let c = TrainConfig {
            work: Work::Steps(7),
            batch: 10,
            optimizer: Optimizer::Sgd {
                lr: 0.1,
                momentum: 0.0,
            },
            prox_mu: 0.0,
            dp_sgd: None,
        };
        let small = split.train.subset(&[0, 1, 2, 3, 4]);
        let out = train_local(
            kind,
            &kind.init(0),
            &small,
            &c,
            &mut Rng::seed(1),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(out.steps, 7);
        assert!(out.mean_loss.is_finite());
        assert!(out.delta.iter().any(|d| *d != 0.0));
    }
}
