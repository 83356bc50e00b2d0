//! Next-character language modelling with [`crate::transformer`]: training on random windows of a
//! token stream (AdamW, linear warm-up then cosine decay, as nanoGPT), evaluation as validation
//! loss in nats per character and next-character accuracy, sampling, and model files
//! (safetensors whose metadata carries the model shape and the vocabulary, so a file alone is
//! enough to sample from).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, Device, Tensor};
use candle_nn::{AdamW, Optimizer as _, ParamsAdamW};

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::spec::ModelSpec;
use crate::text::Vocab;
use crate::train::{TrainConfig, TrainOutput};
use crate::transformer::{Transformer, TransformerConfig};

/// How a language model trains.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LmTrainConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Windows per step (each `context` tokens long).
    pub batch: usize,
    /// Peak learning rate; the schedule warms up to it linearly and decays to a tenth of it.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// AdamW weight decay on matrices and embeddings (not on biases and layer-norm gains).
    pub weight_decay: f64,
}

impl Default for LmTrainConfig {
    /// nanoGPT's `shakespeare_char` settings on a CPU: batch 12, 2,000 steps, learning rate 1e-3
    /// (warm-up 100, cosine to 1e-4), weight decay 0.1, betas (0.9, 0.99).
    fn default() -> Self {
        LmTrainConfig {
            steps: 2000,
            batch: 12,
            lr: 1e-3,
            warmup: 100,
            weight_decay: 0.1,
        }
    }
}

impl LmTrainConfig {
    /// The learning rate at `step` (0-based): linear warm-up, then cosine from `lr` to `lr / 10`
    /// at the last step.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.steps.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        let min = self.lr / 10.0;
        min + 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()) * (self.lr - min)
    }
}

/// `batch` random windows of `context + 1` tokens from `data`: inputs and targets (shifted by
/// one), both `[batch, context]` u32.
pub fn random_batch(
    data: &[u32],
    batch: usize,
    context: usize,
    rng: &mut Rng,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    random_windows(data, batch, context, rng, &mut xs, &mut ys)?;
    Ok((
        Tensor::from_vec(xs, (batch, context), device)?,
        Tensor::from_vec(ys, (batch, context), device)?,
    ))
}

/// [`random_batch`]'s windows (the same draws from `rng`) written into `xs` and `ys`,
/// `batch x context` row-major each.
pub(crate) fn random_windows(
    data: &[u32],
    batch: usize,
    context: usize,
    rng: &mut Rng,
    xs: &mut Vec<u32>,
    ys: &mut Vec<u32>,
) -> Result<()> {
    if data.len() <= context {
        return Err(Error::Dataset(format!(
            "{} tokens of text; a window needs {}",
            data.len(),
            context + 1
        )));
    }
    xs.clear();
    ys.clear();
    for _ in 0..batch {
        let start = rng.below(data.len() - context);
        xs.extend_from_slice(&data[start..start + context]);
        ys.extend_from_slice(&data[start + 1..start + context + 1]);
    }
    Ok(())
}

/// Trains `model` for `cfg.steps` steps on random windows of `data`. `progress` hears
/// `(step, total, loss)` after each step (1-based). Returns the mean training loss.
pub fn train_lm(
    model: &Transformer,
    data: &[u32],
    cfg: &LmTrainConfig,
    rng: &mut Rng,
    progress: Option<&mut dyn FnMut(usize, usize, f32)>,
) -> Result<f32> {
    train_with(LmOptimizer::new, model, data, cfg, rng, progress)
}

/// [`train_steps`] with AdamW from `make` and `cfg`'s schedule.
fn train_with(
    make: fn(&Transformer, f64, f64) -> Result<LmOptimizer>,
    model: &Transformer,
    data: &[u32],
    cfg: &LmTrainConfig,
    rng: &mut Rng,
    progress: Option<&mut dyn FnMut(usize, usize, f32)>,
) -> Result<f32> {
    let mut opt = make(model, cfg.lr, cfg.weight_decay)?;
    train_steps(
        model,
        data,
        cfg,
        &mut opt,
        &|step| cfg.lr_at(step),
        rng,
        progress,
    )
}

/// AdamW as nanoGPT sets it up: weight decay on the matrices and embeddings (rank 2), none on
/// biases and layer-norm gains; betas (0.9, 0.99). Its moments live as long as it does. On the
/// CPU it steps the hand-written training pass of [`crate::fast_lm`] (same loss, gradient and
/// update arithmetic as candle's, several times faster); elsewhere candle's autograd and `AdamW`.
pub struct LmOptimizer {
    inner: LmOpt,
}

/// Which training path an [`LmOptimizer`] drives, with its moments.
enum LmOpt {
    Autograd { decayed: AdamW, plain: AdamW },
    Fast(crate::fast_lm::FlatAdamW),
}

impl LmOptimizer {
    /// Fresh (zero) moments for every variable of `model`: the hand-written path on the CPU,
    /// candle's autograd elsewhere.
    pub fn new(model: &Transformer, lr: f64, weight_decay: f64) -> Result<Self> {
        if model_device(model).is_cpu() {
            Ok(LmOptimizer {
                inner: LmOpt::Fast(crate::fast_lm::FlatAdamW::new(
                    &model.config(),
                    model.vocab(),
                    weight_decay,
                )),
            })
        } else {
            Self::autograd(model, lr, weight_decay)
        }
    }

    /// Fresh moments on candle's autograd path whatever the device (for comparisons and speed
    /// measurements).
    pub fn autograd(model: &Transformer, lr: f64, weight_decay: f64) -> Result<Self> {
        let (decayed, plain): (Vec<_>, Vec<_>) =
            model.vars().iter().cloned().partition(|v| v.rank() == 2);
        let params = |weight_decay| ParamsAdamW {
            lr,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay,
        };
        Ok(LmOptimizer {
            inner: LmOpt::Autograd {
                decayed: AdamW::new(decayed, params(weight_decay))?,
                plain: AdamW::new(plain, params(0.0))?,
            },
        })
    }

    /// One step of candle's `AdamW`s from `grads` at rate `lr` (tests: the reference for
    /// [`crate::fast_lm::FlatAdamW`]).
    #[cfg(test)]
    pub(crate) fn step_autograd(
        &mut self,
        grads: &candle_core::backprop::GradStore,
        lr: f64,
    ) -> Result<()> {
        match &mut self.inner {
            LmOpt::Autograd { decayed, plain } => {
                decayed.set_learning_rate(lr);
                plain.set_learning_rate(lr);
                decayed.step(grads)?;
                plain.step(grads)?;
                Ok(())
            }
            LmOpt::Fast(_) => Err(Error::Model("not candle's optimiser".into())),
        }
    }

    /// Whether it steps the hand-written CPU path.
    pub fn is_fast(&self) -> bool {
        matches!(self.inner, LmOpt::Fast(_))
    }
}

/// The device holding `model`'s variables.
fn model_device(model: &Transformer) -> Device {
    model
        .vars()
        .first()
        .map(|v| v.device().clone())
        .unwrap_or(Device::Cpu)
}

/// [`train_lm`] with the learning rate of each step from `lr_at` (`cfg.warmup` is unused) and
/// the optimiser `opt` (built on `model`'s variables), whose moments carry over to the caller.
/// On the hand-written path the model's variables hold the current parameters whenever
/// `progress` is called, and at the end.
pub(crate) fn train_steps(
    model: &Transformer,
    data: &[u32],
    cfg: &LmTrainConfig,
    opt: &mut LmOptimizer,
    lr_at: &dyn Fn(usize) -> f64,
    rng: &mut Rng,
    mut progress: Option<&mut dyn FnMut(usize, usize, f32)>,
) -> Result<f32> {
    if cfg.batch == 0 || !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return Err(Error::Dataset(format!(
            "batch {} and learning rate {} must be positive",
            cfg.batch, cfg.lr
        )));
    }
    let device = model_device(model);
    let context = model.config().context;
    let mut sum = 0.0f64;
    match &mut opt.inner {
        LmOpt::Autograd { decayed, plain } => {
            for step in 0..cfg.steps {
                let (xs, ys) = random_batch(data, cfg.batch, context, rng, &device)?;
                let (loss, _) = model.loss(&xs, &ys)?;
                let grads = loss.backward()?;
                let lr = lr_at(step);
                decayed.set_learning_rate(lr);
                plain.set_learning_rate(lr);
                decayed.step(&grads)?;
                plain.step(&grads)?;
                let l = loss.to_scalar::<f32>()?;
                sum += f64::from(l);
                if let Some(p) = progress.as_mut() {
                    p(step + 1, cfg.steps, l);
                }
            }
        }
        LmOpt::Fast(adam) => {
            let mut net = crate::fast_lm::FastLm::new(model.config(), model.vocab(), cfg.batch)?;
            let mut params = model.flat()?;
            let mut grad = vec![0.0; params.len()];
            let (mut xs, mut ys) = (Vec::new(), Vec::new());
            for step in 0..cfg.steps {
                random_windows(data, cfg.batch, context, rng, &mut xs, &mut ys)?;
                let l = net.loss_and_grad(&params, &xs, &ys, &mut grad)?;
                adam.step(&mut params, &grad, lr_at(step))?;
                sum += f64::from(l);
                if let Some(p) = progress.as_mut() {
                    model.set_flat(&params)?;
                    p(step + 1, cfg.steps, l);
                }
            }
            model.set_flat(&params)?;
        }
    }
    Ok((sum / cfg.steps.max(1) as f64) as f32)
}

/// [`train_lm`] on candle's autograd path whatever the device (the reference the hand-written
/// CPU path is held to, and the speed it is measured against).
pub fn train_lm_autograd(
    model: &Transformer,
    data: &[u32],
    cfg: &LmTrainConfig,
    rng: &mut Rng,
    progress: Option<&mut dyn FnMut(usize, usize, f32)>,
) -> Result<f32> {
    train_with(LmOptimizer::autograd, model, data, cfg, rng, progress)
}

/// One round of a node's local training of the transformer `kind` with fresh AdamW moments and
/// a constant learning rate: [`crate::lm_local::LocalLm::train_round`] with
/// [`crate::lm_local::LmRounds::default`] (see there).
pub fn train_local_lm(
    kind: &ModelSpec,
    global: &[f32],
    data: &Dataset,
    cfg: &TrainConfig,
    rng: &mut Rng,
    device: &Device,
) -> Result<TrainOutput> {
    let mut local = crate::lm_local::LocalLm::new(kind, global, device)?;
    local.train_round(
        global,
        data,
        cfg,
        &crate::lm_local::LmRounds::default(),
        1,
        rng,
    )
}

/// Validation windows the network's evaluation of a transformer scores (evenly spaced over
/// the validation text), as `cohort lm-train --eval-windows` does by default.
pub const EVAL_WINDOWS: usize = 400;

/// [`evaluate_lm`] of the transformer `kind` holding `params` on the token stream `data`
/// ([`EVAL_WINDOWS`] windows), as `(accuracy, loss)` like [`crate::train::evaluate_params`].
pub fn evaluate_lm_params(kind: &ModelSpec, params: &[f32], data: &Dataset) -> Result<(f32, f32)> {
    let lm = kind
        .lm_config()
        .ok_or_else(|| Error::Model(format!("{kind} is not a transformer")))?;
    if data.is_empty() {
        return Ok((0.0, 0.0));
    }
    let model = Transformer::new(lm, kind.classes(), params, &Device::Cpu)?;
    let ev = evaluate_lm(&model, &data.token_ids(), EVAL_WINDOWS, 32)?;
    Ok((ev.accuracy as f32, ev.loss as f32))
}

/// Validation figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LmEval {
    /// Mean next-character cross-entropy, nats per character.
    pub loss: f64,
    /// Fraction of positions where the most likely character is the next one.
    pub accuracy: f64,
    /// Positions scored.
    pub tokens: usize,
}

/// Scores `data` in non-overlapping `context`-token windows (at most `max_windows`, evenly spaced
/// over the stream, so a cap still covers all of it), `batch` windows per forward pass. Every
/// position of a window is predicted, the first from one character of context, as in nanoGPT's
/// loss estimate.
pub fn evaluate_lm(
    model: &Transformer,
    data: &[u32],
    max_windows: usize,
    batch: usize,
) -> Result<LmEval> {
    let context = model.config().context;
    let total = data.len().saturating_sub(1) / context;
    let windows = total.min(max_windows);
    if windows == 0 {
        return Err(Error::Dataset(format!(
            "{} tokens of validation text; one window needs {}",
            data.len(),
            context + 1
        )));
    }
    let device = model
        .vars()
        .first()
        .map(|v| v.device().clone())
        .unwrap_or(Device::Cpu);
    let starts: Vec<usize> = (0..windows)
        .map(|k| k * total / windows * context)
        .collect();
    let (mut loss_sum, mut correct) = (0.0f64, 0u64);
    for chunk in starts.chunks(batch.max(1)) {
        let mut xs = Vec::with_capacity(chunk.len() * context);
        let mut ys = Vec::with_capacity(chunk.len() * context);
        for &s in chunk {
            xs.extend_from_slice(&data[s..s + context]);
            ys.extend_from_slice(&data[s + 1..s + context + 1]);
        }
        let xs = Tensor::from_vec(xs, (chunk.len(), context), &device)?;
        let ys = Tensor::from_vec(ys, (chunk.len(), context), &device)?;
        let (loss, logits) = model.loss(&xs, &ys)?;
        loss_sum += f64::from(loss.to_scalar::<f32>()?) * (chunk.len() * context) as f64;
        let hits = logits
            .argmax(D::Minus1)?
            .eq(&ys)?
            .to_dtype(candle_core::DType::U32)?;
        correct += u64::from(hits.sum_all()?.to_scalar::<u32>()?);
    }
    let tokens = windows * context;
    Ok(LmEval {
        loss: loss_sum / tokens as f64,
        accuracy: correct as f64 / tokens as f64,
        tokens,
    })
}

/// Continues `prompt` (token ids, at least one) by `tokens` characters, each drawn from the
/// softmax of the last position's logits divided by `temperature` (0: always the most likely).
/// The model sees the last `context` tokens.
pub fn generate(
    model: &Transformer,
    prompt: &[u32],
    tokens: usize,
    temperature: f64,
    rng: &mut Rng,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(Error::Dataset(
            "sampling needs a prompt of at least one character".into(),
        ));
    }
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(Error::Dataset(format!(
            "temperature {temperature} must be >= 0"
        )));
    }
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= model.vocab()) {
        return Err(Error::IndexOutOfRange {
            index: bad as usize,
            len: model.vocab(),
        });
    }
    let device = model
        .vars()
        .first()
        .map(|v| v.device().clone())
        .unwrap_or(Device::Cpu);
    let context = model.config().context;
    let mut out = prompt.to_vec();
    for _ in 0..tokens {
        let window = &out[out.len().saturating_sub(context)..];
        let xs = Tensor::from_slice(window, (1, window.len()), &device)?;
        let logits = model.forward(&xs)?;
        let last: Vec<f32> = logits.get(0)?.get(window.len() - 1)?.to_vec1()?;
        out.push(pick(&last, temperature, rng));
    }
    Ok(out)
}

/// Index of the chosen logit: argmax at temperature 0, else a draw from softmax(logits / T).
fn pick(logits: &[f32], temperature: f64, rng: &mut Rng) -> u32 {
    let argmax = logits
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &l)| {
            if l > best.1 { (i, l) } else { best }
        })
        .0;
    if temperature == 0.0 {
        return argmax as u32;
    }
    let max = f64::from(logits[argmax]);
    let w: Vec<f64> = logits
        .iter()
        .map(|&l| ((f64::from(l) - max) / temperature).exp())
        .collect();
    let mut u = rng.next_f64() * w.iter().sum::<f64>();
    for (i, wi) in w.iter().enumerate() {
        if u < *wi {
            return i as u32;
        }
        u -= wi;
    }
    argmax as u32
}

/// Metadata keys of a language-model file.
const META_MODEL: &str = "cohort.model";
const META_VOCAB: &str = "cohort.vocab";

/// Safetensors bytes of a language model: tensors in sorted-name order (little-endian f32), with
/// the model shape and the vocabulary in `__metadata__`.
pub fn to_lm_bytes(cfg: &TransformerConfig, vocab: &Vocab, flat: &[f32]) -> Result<Vec<u8>> {
    let layout = cfg.layout(vocab.len());
    let expected = cfg.num_params(vocab.len());
    if flat.len() != expected {
        return Err(Error::WrongLength {
            got: flat.len(),
            expected,
        });
    }
    let mut meta = serde_json::Map::new();
    meta.insert(META_MODEL.into(), cfg.to_string().into());
    meta.insert(META_VOCAB.into(), String::from(vocab.clone()).into());
    let mut header = format!("{{\"__metadata__\":{}", serde_json::Value::Object(meta));
    let mut off = 0usize;
    for spec in &layout {
        let end = off + spec.numel() * 4;
        let shape: Vec<String> = spec.shape.iter().map(|d| d.to_string()).collect();
        header.push_str(&format!(
            ",\"{}\":{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{off},{end}]}}",
            spec.name,
            shape.join(",")
        ));
        off = end;
    }
    header.push('}');
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + flat.len() * 4);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in flat {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// A language model read back from [`to_lm_bytes`]'s format: shape, vocabulary, parameters.
/// The bytes are untrusted: every name, shape and size is checked.
pub fn from_lm_bytes(bytes: &[u8]) -> Result<(TransformerConfig, Vocab, Vec<f32>)> {
    let bad = |what: String| Error::Checkpoint(what);
    let len = bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| bad("shorter than a safetensors header".into()))?;
    let header = usize::try_from(len)
        .ok()
        .and_then(|n| bytes.get(8..8usize.checked_add(n)?))
        .ok_or_else(|| bad(format!("header of {len} bytes past the end")))?;
    let json: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| bad(format!("header: {e}")))?;
    let meta = |key: &str| {
        json.get("__metadata__")
            .and_then(|m| m.get(key))
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                bad(format!(
                    "no {key} in the metadata: not a cohort language model"
                ))
            })
    };
    let cfg: TransformerConfig = meta(META_MODEL)?.parse()?;
    let vocab = Vocab::try_from(meta(META_VOCAB)?.to_string())?;
    let tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?;
    let layout = cfg.layout(vocab.len());
    if let Some(extra) = tensors
        .keys()
        .find(|k| !layout.iter().any(|s| &&s.name == k))
    {
        return Err(bad(format!("unexpected tensor {extra} for {cfg}")));
    }
    let mut flat = Vec::with_capacity(cfg.num_params(vocab.len()));
    for spec in &layout {
        let t = tensors
            .get(&spec.name)
            .ok_or_else(|| bad(format!("missing tensor {}", spec.name)))?;
        if t.dims() != spec.shape.as_slice() {
            return Err(bad(format!(
                "tensor {} has shape {:?}, expected {:?}",
                spec.name,
                t.dims(),
                spec.shape
            )));
        }
        flat.extend(
            t.to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
    }
    Ok((cfg, vocab, flat))
}

/// Writes a language-model file.
pub fn save_lm(path: &Path, cfg: &TransformerConfig, vocab: &Vocab, flat: &[f32]) -> Result<()> {
    std::fs::write(path, to_lm_bytes(cfg, vocab, flat)?).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a language-model file.
pub fn load_lm(path: &Path) -> Result<(TransformerConfig, Vocab, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    from_lm_bytes(&bytes).map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{Optimizer, Work};

    fn tiny() -> TransformerConfig {
        TransformerConfig {
            layers: 1,
            heads: 2,
            dim: 16,
            context: 8,
        }
    }

    #[test]
    fn schedule_warms_up_then_decays_to_a_tenth() {
        let c = LmTrainConfig {
            steps: 110,
            warmup: 10,
            ..LmTrainConfig::default()
        };
        assert!((c.lr_at(0) - 1e-4).abs() < 1e-12);
        assert!((c.lr_at(9) - 1e-3).abs() < 1e-12);
        assert!((c.lr_at(10) - 1e-3).abs() < 1e-12);
        assert!((c.lr_at(60) - 5.5e-4).abs() < 1e-12);
        assert!((c.lr_at(110) - 1e-4).abs() < 1e-12);
    }

    #[test]
    fn loss_falls_on_a_repeated_text() {
        let vocab = Vocab::from_texts(["abcdefg "]).unwrap();
        let text = "abc defg ".repeat(40);
        let data = vocab.encode("toy", &text).unwrap();
        let dev = Device::Cpu;
        let m = Transformer::new(tiny(), vocab.len(), &tiny().init(vocab.len(), 3), &dev).unwrap();
        let before = evaluate_lm(&m, &data, 100, 16).unwrap();
        // Uniform guessing over 8 characters is ln 8 = 2.08 nats.
        assert!((before.loss - 8f64.ln()).abs() < 0.1, "{before:?}");
        let cfg = LmTrainConfig {
            steps: 60,
            batch: 8,
            lr: 1e-2,
            warmup: 5,
            weight_decay: 0.0,
        };
        let mut losses = Vec::new();
        let mut on_step = |_: usize, _: usize, l: f32| losses.push(l);
        train_lm(&m, &data, &cfg, &mut Rng::seed(4), Some(&mut on_step)).unwrap();
        let after = evaluate_lm(&m, &data, 100, 16).unwrap();
        assert_eq!(losses.len(), 60);
        assert!(after.loss < 0.5, "{before:?} -> {after:?}");
        assert!(after.accuracy > 0.8, "{after:?}");
        // The model has learnt the cycle: greedy sampling continues it.
        let prompt = vocab.encode("p", "abc d").unwrap();
        let out = generate(&m, &prompt, 8, 0.0, &mut Rng::seed(1)).unwrap();
        assert_eq!(vocab.decode(&out).unwrap(), "abc defg abc ");
    }

    #[test]
    fn sampling_is_seeded_and_checks_its_input() {
        let dev = Device::Cpu;
        let m = Transformer::new(tiny(), 5, &tiny().init(5, 1), &dev).unwrap();
        let a = generate(&m, &[1, 2], 20, 1.0, &mut Rng::seed(9)).unwrap();
        assert_eq!(a.len(), 22);
        assert_eq!(
            a,
            generate(&m, &[1, 2], 20, 1.0, &mut Rng::seed(9)).unwrap()
        );
        assert!(generate(&m, &[], 3, 1.0, &mut Rng::seed(9)).is_err());
        assert!(generate(&m, &[5], 3, 1.0, &mut Rng::seed(9)).is_err());
        assert!(generate(&m, &[1], 3, -1.0, &mut Rng::seed(9)).is_err());
        assert_eq!(pick(&[0.0, 3.0, 1.0], 0.0, &mut Rng::seed(1)), 1);
    }

    #[test]
    fn model_file_round_trip_and_checks() {
        let vocab = Vocab::from_texts(["\"quoted\"\\ \n"]).unwrap();
        let cfg = tiny();
        let p = cfg.init(vocab.len(), 2);
        let bytes = to_lm_bytes(&cfg, &vocab, &p).unwrap();
        let (c2, v2, p2) = from_lm_bytes(&bytes).unwrap();
        assert_eq!((c2, &v2, &p2), (cfg, &vocab, &p));
        // candle reads the same tensors.
        let t = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
        assert_eq!(t["head.weight"].dims(), &[vocab.len(), 16]);
        assert!(from_lm_bytes(&bytes[..bytes.len() - 4]).is_err());
        assert!(from_lm_bytes(&bytes[..20]).is_err());
        assert!(from_lm_bytes(b"").is_err());
        // A plain checkpoint without the metadata is refused with a reason.
        let digits = crate::spec::ModelSpec::digits_mlp();
        let plain = crate::params::to_safetensors_bytes(&digits, &digits.init(1)).unwrap();
        let e = from_lm_bytes(&plain).unwrap_err().to_string();
        assert!(e.contains("not a cohort language model"), "{e}");
        assert!(to_lm_bytes(&cfg, &vocab, &p[1..]).is_err());
    }

    #[test]
    fn the_transformer_is_a_network_workload() {
        let spec = ModelSpec::transformer(tiny(), 9).unwrap();
        assert_eq!(spec.layout(), tiny().layout(9));
        assert_eq!(spec.init(4), tiny().init(9, 4));
        assert!(!spec.is_dense_stack());
        assert!(ModelSpec::transformer(tiny(), 1).is_err());
        assert!(ModelSpec::transformer(tiny(), 257).is_err());
        assert!(crate::net::Model::new(&spec, &spec.init(1), &Device::Cpu).is_err());
        assert!(Dataset::tokens(&[1, 256]).is_err());
        let data = Dataset::tokens(&[0, 1, 2, 3, 4, 5, 6, 7, 8].repeat(20)).unwrap();
        assert_eq!(data.token_ids()[..3], [0, 1, 2]);
        let cfg = TrainConfig {
            work: Work::Steps(20),
            batch: 4,
            optimizer: Optimizer::Adam { lr: 0.01 },
            prox_mu: 0.0,
            dp_sgd: None,
        };
        let global = spec.init(2);
        let before = evaluate_lm_params(&spec, &global, &data).unwrap().1;
        let out =
            crate::train::train_local(&spec, &global, &data, &cfg, &mut Rng::seed(3), &Device::Cpu)
                .unwrap();
        // The FedAvg weight is the tokens trained on, and the delta lowers the loss.
        assert_eq!(out.samples, 20 * 4 * 8);
        let after: Vec<f32> = global.iter().zip(&out.delta).map(|(g, d)| g + d).collect();
        let after = crate::train::evaluate_params(&spec, &after, &data)
            .unwrap()
            .1;
        assert!(after < before - 0.5, "{before} -> {after}");
        // What is not implemented for the transformer is refused, not ignored.
        for bad in [
            TrainConfig {
                optimizer: Optimizer::Sgd {
                    lr: 0.1,
                    momentum: 0.0,
                },
                ..cfg
            },
            TrainConfig {
                prox_mu: 0.1,
                ..cfg
            },
        ] {
            let e = crate::train::train_local(
                &spec,
                &global,
                &data,
                &bad,
                &mut Rng::seed(3),
                &Device::Cpu,
            );
            assert!(e.is_err());
        }
        // A token outside the vocabulary is refused.
        let wide = Dataset::tokens(&[0, 9, 1, 2]).unwrap();
        let e =
            crate::train::train_local(&spec, &global, &wide, &cfg, &mut Rng::seed(1), &Device::Cpu);
        assert!(e.is_err());
    }
}
