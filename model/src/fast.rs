//! Local training of the MLPs (every [`ModelSpec`] that [`ModelSpec::is_dense_stack`]) without
//! autograd: a hand-written forward and backward pass over candle CPU storage, 2.2-2.4x the
//! autograd path's samples per second on the 2NN at batch 32 (`examples/train_speed.rs`).
//!
//! Where the autograd step went (callgrind, 2NN, batch 32, one thread): gemm about 45% of the
//! instructions; gradient accumulation about 30% (the backward pass starts every gradient as a
//! `zeros_like` tensor and adds into it, a zeroed allocation and a full pass per parameter);
//! zeroed allocations about 17% overall; `Var::set` copying each updated tensor 5%; the rest the
//! broadcasts, loss ops and graph walk. Here the parameters live in one flat [`CpuStorage`], every
//! product is [`BackendStorage::matmul`] (candle's gemm) on strided [`Layout`] views of that
//! storage (transposes are strides, never copies), the bias, activation, loss and optimiser are single
//! fused loops, and each tensor is updated in place as soon as its gradient exists. gemm is now
//! about 85% of the step. The first layer's weight is held transposed while training so that gemm
//! reads it in place instead of packing all of it on every forward pass (10% faster); nothing
//! needs its input gradient, the one product that would pack it instead.
//!
//! Threads: candle runs each matmul on `RAYON_NUM_THREADS` threads, by default every physical
//! core, and when that variable is unset it re-reads `/proc/cpuinfo` on every matmul (about
//! 35 us, eight times a step here). Setting `RAYON_NUM_THREADS` (1 for one node per core) avoids
//! both; this library leaves the process environment alone.
//!
//! DP-SGD ([`crate::dpsgd`]) takes the same products: one backward pass computes every layer's
//! per-example `dZ` with the weights unchanged, the exact per-example gradient norms follow from
//! `||dz_i||^2 (||a_i||^2 + 1)` per layer without forming per-example gradients, each `dZ` row
//! is scaled by its clipping factor, and the same gemms sum the clipped gradients. The clipping
//! costs next to nothing; the Gaussian noise, one draw per parameter per step, is most of the
//! difference: 2NN on MNIST, expected batch 64, one thread, dev profile: 47.6-52.2k samples/s
//! without DP, 26.6-27.9k with (noise 0.9 ms of a 2.4 ms step); the per-example autograd path
//! ([`crate::train::train_model_autograd_dp`]) manages 1.2k.
//!
//! The arithmetic is the same as [`crate::train::train_model_autograd`]'s up to float rounding
//! order; the tests below hold the two within 1e-6 of each other (Adam on a few near-zero
//! gradients aside, see there). Every loop is sequential, so a run is bit-for-bit reproducible
//! (gemm splits rows and columns over threads, never a sum).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout};

use crate::data::Dataset;
use crate::dpsgd::{DpSgdConfig, NoiseSource, clip_factor};
use crate::error::{Error, Result};
use crate::kernels::internal;
use crate::net::{Model, ModelSpec};
use crate::rng::Rng;
use crate::spec::{Activation, Op};
use crate::train::{Batches, Optimizer, TrainConfig, check_data};

/// Whether [`train`] handles `kind`.
pub fn supports(kind: &ModelSpec) -> bool {
    kind.is_dense_stack()
}

/// One `Linear` layer and where its tensors sit in the flat parameter vector.
#[derive(Debug, Clone, Copy)]
struct Dense {
    inp: usize,
    out: usize,
    /// Offset of `weight`: canonically `[out, inp]` row-major; while training, `[inp, out]`
    /// when `transposed`.
    weight: usize,
    /// Offset of `bias`, shape `[out]`.
    bias: usize,
    /// Whether the training layout holds this weight transposed. The first layer's is: gemm then
    /// reads it in place in the forward pass instead of packing all of it on every step, and the
    /// first layer needs no input gradient, the one product that would pack it instead.
    transposed: bool,
    /// The nonlinearity after this layer: ReLU or tanh for a hidden layer, `None` for the output.
    activation: Option<Activation>,
}

impl Dense {
    /// Rows and columns of the weight as stored while training.
    fn stored(&self) -> (usize, usize) {
        if self.transposed {
            (self.inp, self.out)
        } else {
            (self.out, self.inp)
        }
    }
}

/// Transposes the `rows x cols` row-major block of `params` at `off` in place.
fn transpose_block(params: &mut [f32], off: usize, rows: usize, cols: usize) {
    let block = &mut params[off..off + rows * cols];
    let copy = block.to_vec();
    for (r, row) in copy.chunks_exact(cols).enumerate() {
        for (c, v) in row.iter().enumerate() {
            block[c * rows + r] = *v;
        }
    }
}

/// The layers `fc1`, `fc2`, ... of `kind`, in order, read off its canonical layout, with their
/// activations from its forward pass.
fn dense_layers(kind: &ModelSpec) -> Result<Vec<Dense>> {
    let activations: Vec<Option<Activation>> = kind
        .ops()?
        .into_iter()
        .filter_map(|op| match op {
            Op::Dense { activation, .. } => Some(activation),
            _ => None,
        })
        .collect();
    let mut offsets = std::collections::HashMap::new();
    let mut off = 0;
    for spec in kind.layout() {
        let n = spec.numel();
        offsets.insert(spec.name, (off, spec.shape));
        off += n;
    }
    let mut layers = Vec::new();
    for i in 1.. {
        let (Some((weight, shape)), Some((bias, _))) = (
            offsets.get(&format!("fc{i}.weight")),
            offsets.get(&format!("fc{i}.bias")),
        ) else {
            break;
        };
        let &[out, inp] = shape.as_slice() else {
            return Err(internal(format!("fc{i}.weight is not a matrix")));
        };
        let activation = *activations
            .get(i - 1)
            .ok_or_else(|| internal(format!("fc{i} is not in {kind}'s forward pass")))?;
        layers.push(Dense {
            inp,
            out,
            weight: *weight,
            bias: *bias,
            transposed: i == 1,
            activation,
        });
    }
    if layers.len() * 2 != offsets.len() || layers.len() != activations.len() {
        return Err(internal(format!("{kind} is not a stack of fc layers")));
    }
    Ok(layers)
}

fn slice(s: &CpuStorage) -> Result<&[f32]> {
    match s {
        CpuStorage::F32(v) => Ok(v),
        _ => Err(internal("expected f32 storage")),
    }
}

fn slice_mut(s: &mut CpuStorage) -> Result<&mut [f32]> {
    match s {
        CpuStorage::F32(v) => Ok(v),
        _ => Err(internal("expected f32 storage")),
    }
}

/// A row-major `rows x cols` matrix at `offset`.
fn rows(rows: usize, cols: usize, offset: usize) -> Layout {
    Layout::contiguous_with_offset((rows, cols), offset)
}

/// The transpose (`cols x rows`) of a row-major `rows x cols` matrix at `offset`: strides only.
fn transposed(rows: usize, cols: usize, offset: usize) -> Layout {
    Layout::new((cols, rows).into(), vec![1, cols], offset)
}

/// `lhs (m x k) * rhs (k x n)` into fresh row-major storage.
fn matmul(
    lhs: (&CpuStorage, &Layout),
    rhs: (&CpuStorage, &Layout),
    m: usize,
    n: usize,
    k: usize,
) -> Result<CpuStorage> {
    Ok(lhs.0.matmul(rhs.0, (1, m, n, k), lhs.1, rhs.1)?)
}

/// The optimiser and its state, over the flat parameter vector.
enum Update {
    Sgd {
        lr: f32,
    },
    Momentum {
        lr: f32,
        momentum: f32,
        velocity: Vec<f32>,
    },
    Adam {
        lr: f32,
        step: i32,
        scale_m: f32,
        scale_v: f32,
        m: Vec<f32>,
        v: Vec<f32>,
    },
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f32 = 1e-8;

/// The optimiser over the flat parameters (training layout), with FedProx's pull to the start.
pub(crate) struct Optim {
    update: Update,
    /// FedProx: `mu` and the starting point.
    prox: Option<(f32, Vec<f32>)>,
    /// The FedProx-adjusted gradient of the block being applied.
    scratch: Vec<f32>,
}

impl Optim {
    pub(crate) fn new(cfg: &TrainConfig, start: &[f32]) -> Self {
        let n = start.len();
        let update = match cfg.optimizer {
            Optimizer::Sgd { lr, momentum } if momentum > 0.0 => Update::Momentum {
                lr: lr as f32,
                momentum: momentum as f32,
                velocity: vec![0.0; n],
            },
            Optimizer::Sgd { lr, .. } => Update::Sgd { lr: lr as f32 },
            Optimizer::Adam { lr } => Update::Adam {
                lr: lr as f32,
                step: 0,
                scale_m: 1.0,
                scale_v: 1.0,
                m: vec![0.0; n],
                v: vec![0.0; n],
            },
        };
        let prox = (cfg.prox_mu > 0.0).then(|| (cfg.prox_mu as f32, start.to_vec()));
        Optim {
            update,
            prox,
            scratch: Vec::new(),
        }
    }

    /// Called once per step before the first [`Optim::apply`].
    pub(crate) fn begin_step(&mut self) {
        if let Update::Adam {
            step,
            scale_m,
            scale_v,
            ..
        } = &mut self.update
        {
            *step += 1;
            *scale_m = (1.0 / (1.0 - BETA1.powi(*step))) as f32;
            *scale_v = (1.0 / (1.0 - BETA2.powi(*step))) as f32;
        }
    }

    /// Updates `params[off..off + grad.len()]` with the loss gradient `grad`, in place.
    pub(crate) fn apply(&mut self, params: &mut [f32], off: usize, grad: &[f32]) {
        let n = grad.len();
        let w = &mut params[off..off + n];
        match &self.prox {
            None => update(&mut self.update, w, off, grad),
            Some((mu, anchor)) => {
                // d/dw (mu/2 ||w - anchor||^2) = mu (w - anchor), at the pre-update w.
                let mu = *mu;
                self.scratch.clear();
                self.scratch.extend(
                    grad.iter()
                        .zip(w.iter())
                        .zip(&anchor[off..off + n])
                        .map(|((g, w), a)| g + mu * (w - a)),
                );
                update(&mut self.update, w, off, &self.scratch);
            }
        }
    }
}

/// One optimiser step on the block `w` that sits at flat offset `off`, given its gradient `g`.
fn update(u: &mut Update, w: &mut [f32], off: usize, g: &[f32]) {
    let n = g.len();
    match u {
        Update::Sgd { lr } => {
            let lr = *lr;
            for (w, g) in w.iter_mut().zip(g) {
                *w -= g * lr;
            }
        }
        Update::Momentum {
            lr,
            momentum,
            velocity,
        } => {
            let (lr, mom) = (*lr, *momentum);
            for ((w, g), v) in w.iter_mut().zip(g).zip(&mut velocity[off..off + n]) {
                *v = *v * mom + g;
                *w -= *v * lr;
            }
        }
        Update::Adam {
            lr,
            scale_m,
            scale_v,
            m,
            v,
            ..
        } => {
            let (lr, sm, sv) = (*lr, *scale_m, *scale_v);
            let (b1, b2) = (BETA1 as f32, BETA2 as f32);
            let (c1, c2) = ((1.0 - BETA1) as f32, (1.0 - BETA2) as f32);
            for (((w, g), m), v) in w
                .iter_mut()
                .zip(g)
                .zip(&mut m[off..off + n])
                .zip(&mut v[off..off + n])
            {
                *m = *m * b1 + g * c1;
                *v = *v * b2 + g * g * c2;
                *w -= (*m * sm) / ((*v * sv).sqrt() + EPS) * lr;
            }
        }
    }
}

/// Mean softmax cross-entropy of `logits` (`batch x classes`) against `labels`; overwrites the
/// logits with the loss gradient scaled by `grad_scale`: `(softmax - onehot) * grad_scale`, which
/// is the mean loss's gradient for `grad_scale = 1 / batch` and each example's own loss gradient
/// (row by row) for `grad_scale = 1`.
pub(crate) fn softmax_cross_entropy(
    logits: &mut [f32],
    labels: &[u8],
    classes: usize,
    grad_scale: f32,
) -> f32 {
    let inv_b = 1.0 / labels.len() as f32;
    let mut total = 0.0f32;
    for (row, &y) in logits.chunks_exact_mut(classes).zip(labels) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let y = usize::from(y);
        let zy = row.get(y).map_or(max, |z| z - max);
        let mut sum = 0.0f32;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        // -log softmax[y] = log(sum) - (z_y - max)
        total += sum.ln() - zy;
        let scale = grad_scale / sum;
        for v in row.iter_mut() {
            *v *= scale;
        }
        if let Some(v) = row.get_mut(y) {
            *v -= grad_scale;
        }
    }
    total * inv_b
}

/// Per-step buffers, sized for the largest batch.
struct Net {
    layers: Vec<Dense>,
    /// The flat parameters in training layout (canonical, but for transposed weights).
    params: CpuStorage,
    /// The input batch, row-major.
    x: CpuStorage,
    labels: Vec<u8>,
    /// Activations (after the ReLU or tanh) of the hidden layers, filled by [`Net::forward`].
    hidden: Vec<CpuStorage>,
    /// Bias gradient scratch.
    bias_grad: Vec<f32>,
}

impl Net {
    /// Copies the records `idx` of `data` into the first rows of `x` and `labels`, growing them
    /// when a (Poisson) batch is larger than any before.
    fn load(&mut self, data: &Dataset, idx: &[usize]) -> Result<()> {
        let f = data.features;
        let x = match &mut self.x {
            CpuStorage::F32(v) => v,
            _ => return Err(internal("expected f32 storage")),
        };
        if x.len() < idx.len() * f {
            x.resize(idx.len() * f, 0.0);
        }
        if self.labels.len() < idx.len() {
            self.labels.resize(idx.len(), 0);
        }
        for ((row, label), &i) in x.chunks_exact_mut(f).zip(&mut self.labels).zip(idx) {
            data.row_into(i, row);
            *label = data.y[i];
        }
        Ok(())
    }

    fn input(&self, layer: usize) -> &CpuStorage {
        match layer.checked_sub(1) {
            None => &self.x,
            Some(h) => &self.hidden[h],
        }
    }

    /// The layer's weight `W^T` (`inp x out`) as a view of the parameters.
    fn weight_t(&self, d: &Dense) -> Layout {
        if d.transposed {
            rows(d.inp, d.out, d.weight)
        } else {
            transposed(d.out, d.inp, d.weight)
        }
    }

    /// The layer's weight `W` (`out x inp`) as a view of the parameters.
    fn weight(&self, d: &Dense) -> Layout {
        if d.transposed {
            transposed(d.inp, d.out, d.weight)
        } else {
            rows(d.out, d.inp, d.weight)
        }
    }

    /// Forward pass for `b` rows of `x`; returns the logits.
    fn forward(&mut self, b: usize) -> Result<CpuStorage> {
        self.hidden.clear();
        let last = self.layers.len() - 1;
        for (l, d) in self.layers.iter().enumerate() {
            let mut z = matmul(
                (self.input(l), &rows(b, d.inp, 0)),
                (&self.params, &self.weight_t(d)),
                b,
                d.out,
                d.inp,
            )?;
            let bias = &slice(&self.params)?[d.bias..d.bias + d.out];
            let zs = slice_mut(&mut z)?;
            for row in zs.chunks_exact_mut(d.out) {
                match d.activation {
                    None => {
                        for (v, b) in row.iter_mut().zip(bias) {
                            *v += b;
                        }
                    }
                    Some(Activation::Relu) => {
                        for (v, b) in row.iter_mut().zip(bias) {
                            *v = (*v + b).max(0.0);
                        }
                    }
                    Some(Activation::Tanh) => {
                        for (v, b) in row.iter_mut().zip(bias) {
                            *v = (*v + b).tanh();
                        }
                    }
                }
            }
            if l == last {
                return Ok(z);
            }
            self.hidden.push(z);
        }
        Err(internal("model without layers"))
    }

    /// Computes the weight gradient of layer `l` from its output gradient `dz` (`b x out`) and
    /// applies it.
    fn weight_step(&mut self, l: usize, dz: &CpuStorage, b: usize, opt: &mut Optim) -> Result<()> {
        let grad = self.weight_grad(l, dz, b)?;
        let d = self.layers[l];
        opt.apply(slice_mut(&mut self.params)?, d.weight, slice(&grad)?);
        Ok(())
    }

    /// The weight gradient of layer `l` (stored layout) from its output gradient `dz` (`b x out`):
    /// `dW = dZ^T A_prev`, or `dW^T = A_prev^T dZ` for a transposed weight.
    fn weight_grad(&self, l: usize, dz: &CpuStorage, b: usize) -> Result<CpuStorage> {
        let d = self.layers[l];
        let (r, c) = d.stored();
        Ok(if d.transposed {
            matmul(
                (self.input(l), &transposed(b, d.inp, 0)),
                (dz, &rows(b, d.out, 0)),
                r,
                c,
                b,
            )?
        } else {
            matmul(
                (dz, &transposed(b, d.out, 0)),
                (self.input(l), &rows(b, d.inp, 0)),
                r,
                c,
                b,
            )?
        })
    }

    /// `dA_prev = dZ W` (`b x inp`) for layer `l > 0`, times the derivative of the previous
    /// layer's activation (read off its output `a`): the ReLU's mask `a > 0`, or tanh's
    /// `1 - a^2`; that is the previous layer's `dZ`.
    fn input_grad(&self, l: usize, dz: &CpuStorage, b: usize) -> Result<CpuStorage> {
        let d = self.layers[l];
        let mut da = matmul(
            (dz, &rows(b, d.out, 0)),
            (&self.params, &self.weight(&d)),
            b,
            d.inp,
            d.out,
        )?;
        let a = slice(self.input(l))?;
        let prev = l
            .checked_sub(1)
            .and_then(|p| self.layers.get(p))
            .and_then(|p| p.activation);
        match prev {
            Some(Activation::Relu) => {
                for (g, a) in slice_mut(&mut da)?.iter_mut().zip(a) {
                    *g = if *a > 0.0 { *g } else { 0.0 };
                }
            }
            Some(Activation::Tanh) => {
                for (g, a) in slice_mut(&mut da)?.iter_mut().zip(a) {
                    *g *= 1.0 - a * a;
                }
            }
            None => return Err(internal(format!("layer {l} has no hidden layer before it"))),
        }
        Ok(da)
    }

    /// One minibatch step on the first `b` rows of `x`; returns the batch's mean loss.
    fn step(&mut self, b: usize, opt: &mut Optim) -> Result<f32> {
        let mut dz = self.forward(b)?;
        let classes = self.layers.last().map_or(0, |d| d.out);
        let inv_b = 1.0 / b as f32;
        let loss = softmax_cross_entropy(slice_mut(&mut dz)?, &self.labels[..b], classes, inv_b);
        opt.begin_step();
        for l in (0..self.layers.len()).rev() {
            let d = self.layers[l];
            // dA_prev = dZ W before W changes, times the activation's derivative to dZ_prev (the
            // input needs no gradient).
            let next = if l > 0 {
                Some(self.input_grad(l, &dz, b)?)
            } else {
                None
            };
            self.weight_step(l, &dz, b, opt)?;
            self.bias_grad.clear();
            self.bias_grad.resize(d.out, 0.0);
            for row in slice(&dz)?.chunks_exact(d.out) {
                for (s, v) in self.bias_grad.iter_mut().zip(row) {
                    *s += v;
                }
            }
            opt.apply(slice_mut(&mut self.params)?, d.bias, &self.bias_grad);
            if let Some(next) = next {
                dz = next;
            }
        }
        Ok(loss)
    }

    /// DP-SGD's first pass over the first `b` rows of `x`: the forward pass and every layer's
    /// per-example output gradient `dZ_l` (row `i` = example `i`'s own loss gradient, not divided
    /// by the batch), with the weights unchanged; returns (mean loss, `dZ_l` by layer, each
    /// example's squared gradient norm over all parameters).
    ///
    /// The norms come without per-example gradients (Goodfellow 2015, "Efficient per-example
    /// gradient computations", arXiv:1510.01799): for `z = a W^T + b`, example `i`'s weight
    /// gradient is the outer product `dz_i a_i^T` and its bias gradient `dz_i`, so
    /// `||dW_i||_F^2 + ||db_i||^2 = ||dz_i||^2 (||a_i||^2 + 1)`, summed over the layers.
    fn per_example_pass(&mut self, b: usize) -> Result<(f32, Vec<CpuStorage>, Vec<f64>)> {
        let mut dz = self.forward(b)?;
        let classes = self.layers.last().map_or(0, |d| d.out);
        let loss = softmax_cross_entropy(slice_mut(&mut dz)?, &self.labels[..b], classes, 1.0);
        let mut sq_norms = vec![0.0f64; b];
        let mut dzs = Vec::with_capacity(self.layers.len());
        for l in (0..self.layers.len()).rev() {
            let d = self.layers[l];
            let a = slice(self.input(l))?;
            for ((sq, g), a) in sq_norms
                .iter_mut()
                .zip(slice(&dz)?.chunks_exact(d.out))
                .zip(a.chunks_exact(d.inp))
            {
                *sq += sum_sq(g) * (sum_sq(a) + 1.0);
            }
            if l > 0 {
                let next = self.input_grad(l, &dz, b)?;
                dzs.push(std::mem::replace(&mut dz, next));
            }
        }
        dzs.push(dz);
        dzs.reverse();
        Ok((loss, dzs, sq_norms))
    }

    /// One DP-SGD step on the first `b` rows of `x` (`b` may be 0: a noise-only step); returns
    /// the batch's mean loss (0 for an empty batch). See [`crate::dpsgd`] for the mechanism.
    ///
    /// After [`Net::per_example_pass`], row `i` of every layer's `dZ` is scaled by
    /// `min(1, C / ||g_i||) / (q N)`. Backpropagation is linear in the upstream gradient for fixed
    /// activations, so this is exactly example `i`'s clipped gradient, divided by the expected
    /// batch; the gemm that sums over the batch then gives the clipped sum, to which each
    /// coordinate gets `N(0, (sigma C / (q N))^2)` before the optimiser step. The noise is drawn
    /// layer by layer from the last, weight then bias, in the training layout.
    fn dp_step(
        &mut self,
        b: usize,
        dp: &DpSgdConfig,
        expected_batch: f64,
        noise: &mut NoiseSource,
        opt: &mut Optim,
    ) -> Result<f32> {
        let (loss, dzs) = if b > 0 {
            let (loss, mut dzs, sq_norms) = self.per_example_pass(b)?;
            let factors: Vec<f32> = sq_norms
                .iter()
                .map(|sq| (clip_factor(sq.sqrt(), dp.clip) / expected_batch) as f32)
                .collect();
            for (dz, d) in dzs.iter_mut().zip(&self.layers) {
                for (row, f) in slice_mut(dz)?.chunks_exact_mut(d.out).zip(&factors) {
                    row.iter_mut().for_each(|v| *v *= f);
                }
            }
            (loss, dzs)
        } else {
            (0.0, Vec::new())
        };
        let std = dp.noise * dp.clip / expected_batch;
        opt.begin_step();
        for l in (0..self.layers.len()).rev() {
            let d = self.layers[l];
            let mut grad = match dzs.get(l) {
                Some(dz) => match self.weight_grad(l, dz, b)? {
                    CpuStorage::F32(v) => v,
                    _ => return Err(internal("expected f32 storage")),
                },
                None => vec![0.0; d.inp * d.out],
            };
            noise.add_gaussian(&mut grad, std);
            opt.apply(slice_mut(&mut self.params)?, d.weight, &grad);
            self.bias_grad.clear();
            self.bias_grad.resize(d.out, 0.0);
            if let Some(dz) = dzs.get(l) {
                for row in slice(dz)?.chunks_exact(d.out) {
                    for (s, v) in self.bias_grad.iter_mut().zip(row) {
                        *s += v;
                    }
                }
            }
            noise.add_gaussian(&mut self.bias_grad, std);
            opt.apply(slice_mut(&mut self.params)?, d.bias, &self.bias_grad);
        }
        Ok(loss)
    }
}

/// `sum x^2` in f64.
fn sum_sq(x: &[f32]) -> f64 {
    x.iter().map(|v| f64::from(*v) * f64::from(*v)).sum()
}

/// Trains the flat parameters `params` (canonical order) of an MLP `kind` in place, exactly as
/// [`crate::train::train_model`] does (same batch schedule from `rng`, same optimiser, FedProx
/// and loss); returns (mean minibatch loss, steps). `progress` gets (step, total steps) after
/// every step; `params` holds the result only once this returns.
///
/// With `cfg.dp_sgd` set this is DP-SGD ([`crate::dpsgd`]; `rng` is then unused), whose batches
/// and noise come from `noise`, required then.
pub fn train(
    kind: &ModelSpec,
    params: &mut Vec<f32>,
    data: &Dataset,
    cfg: &TrainConfig,
    rng: &mut Rng,
    noise: Option<&mut NoiseSource>,
    mut progress: Option<&mut dyn FnMut(usize, usize)>,
) -> Result<(f32, usize)> {
    run(
        kind,
        params,
        data,
        cfg,
        rng,
        noise,
        true,
        &mut |step, total, _| {
            if let Some(p) = progress.as_mut() {
                p(step, total);
            }
            Ok(())
        },
    )
}

/// [`crate::train::train_model`] for an MLP `model` on the CPU. With a `progress` callback the
/// model's variables are brought up to date before every call, as the autograd path trains them
/// in place (a caller may evaluate the model from its callback); that costs a copy of the
/// parameters per step and the transposed first layer, so without one they are written once at
/// the end.
pub fn train_model(
    model: &Model,
    data: &Dataset,
    cfg: &TrainConfig,
    rng: &mut Rng,
    noise: Option<&mut NoiseSource>,
    progress: Option<&mut dyn FnMut(usize, usize)>,
) -> Result<(f32, usize)> {
    let mut params = model.flat()?;
    let out = match progress {
        None => run(
            model.spec(),
            &mut params,
            data,
            cfg,
            rng,
            noise,
            true,
            &mut |_, _, _| Ok(()),
        )?,
        Some(p) => run(
            model.spec(),
            &mut params,
            data,
            cfg,
            rng,
            noise,
            false,
            &mut |step, total, now| {
                write_vars(model, now)?;
                p(step, total);
                Ok(())
            },
        )?,
    };
    write_vars(model, &params)?;
    Ok(out)
}

/// Overwrites a contiguous f32 tensor in place with a slice of the same length.
struct Overwrite<'a>(&'a [f32]);

impl candle_core::InplaceOp1 for Overwrite<'_> {
    fn name(&self) -> &'static str {
        "overwrite"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let (CpuStorage::F32(v), Some((start, end))) = (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("overwrite: expected a contiguous f32 tensor")
        };
        match v.get_mut(start..end) {
            Some(dst) if dst.len() == self.0.len() => dst.copy_from_slice(self.0),
            _ => candle_core::bail!("overwrite: {} values for {}", self.0.len(), end - start),
        }
        Ok(())
    }
}

/// Writes canonical flat parameters into `model`'s variables in place, without reallocating.
pub(crate) fn write_vars(model: &Model, flat: &[f32]) -> Result<()> {
    let mut off = 0;
    for v in model.vars() {
        let n = v.elem_count();
        let src = flat.get(off..off + n).ok_or(Error::WrongLength {
            got: flat.len(),
            expected: off + n,
        })?;
        v.as_tensor().inplace_op1(&Overwrite(src))?;
        off += n;
    }
    Ok(())
}

/// Called after every step with (step, total steps, the parameters in training layout).
type OnStep<'a> = dyn FnMut(usize, usize, &[f32]) -> Result<()> + 'a;

/// The training loop: minibatch SGD, or DP-SGD when `cfg.dp_sgd` is set (then `noise` is
/// required). `transpose` allows the transposed first-layer layout; `on_step` gets (step, total
/// steps, the parameters in training layout), which is canonical without it.
// Private, and each argument is a different kind of thing; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
fn run(
    kind: &ModelSpec,
    params: &mut Vec<f32>,
    data: &Dataset,
    cfg: &TrainConfig,
    rng: &mut Rng,
    noise: Option<&mut NoiseSource>,
    transpose: bool,
    on_step: &mut OnStep<'_>,
) -> Result<(f32, usize)> {
    let mut dp = crate::dpsgd::resolve(cfg, noise)?;
    if params.len() != kind.num_params() {
        return Err(Error::WrongLength {
            got: params.len(),
            expected: kind.num_params(),
        });
    }
    if !check_data(kind, data)? {
        return Ok((0.0, 0));
    }
    let mut layers = dense_layers(kind)?;
    if !transpose {
        layers.iter_mut().for_each(|d| d.transposed = false);
    }
    let to_training_layout = |p: &mut [f32], back: bool| {
        for d in layers.iter().filter(|d| d.transposed) {
            let (r, c) = if back { (d.inp, d.out) } else { (d.out, d.inp) };
            transpose_block(p, d.weight, r, c);
        }
    };
    to_training_layout(params, false);
    let mut batches = Batches::new(data.len(), cfg);
    let total_steps = match &dp {
        None => batches.total_steps,
        Some((c, _)) => c.steps(cfg.work),
    };
    let expected_batch = dp
        .as_ref()
        .map_or(0.0, |(c, _)| c.expected_batch(data.len()));
    let f = data.features;
    let mut opt = Optim::new(cfg, params);
    let mut net = Net {
        layers: layers.clone(),
        params: CpuStorage::F32(std::mem::take(params)),
        x: CpuStorage::F32(vec![0.0; batches.batch() * f]),
        labels: vec![0; batches.batch()],
        hidden: Vec::new(),
        bias_grad: Vec::new(),
    };
    let mut sample = Vec::new();
    let mut steps = || -> Result<(f64, usize)> {
        let (mut loss_sum, mut nonempty) = (0.0f64, 0usize);
        for step in 0..total_steps {
            let idx: &[usize] = match dp.as_mut() {
                None => batches.next(rng),
                Some((c, noise)) => {
                    noise.poisson_sample(data.len(), c.rate, &mut sample);
                    &sample
                }
            };
            let b = idx.len();
            net.load(data, idx)?;
            let loss = match dp.as_mut() {
                None => net.step(b, &mut opt)?,
                Some((c, noise)) => net.dp_step(b, c, expected_batch, noise, &mut opt)?,
            };
            loss_sum += f64::from(loss);
            nonempty += usize::from(b > 0);
            on_step(step + 1, total_steps, slice(&net.params)?)?;
        }
        Ok((loss_sum, nonempty))
    };
    let result = steps();
    // Hand the parameters back whatever happened.
    if let CpuStorage::F32(v) = net.params {
        *params = v;
    }
    to_training_layout(params, true);
    let (loss_sum, nonempty) = result?;
    // DP-SGD averages over the steps that had a batch; the minibatch schedule never has an
    // empty one.
    let counted = if dp.is_some() { nonempty } else { total_steps };
    Ok(((loss_sum / counted.max(1) as f64) as f32, total_steps))
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::train::{Work, train_model_autograd};

    /// `n` samples of `features` values in [0, 1) with seeded labels.
    pub(super) fn noise(n: usize, features: usize, seed: u64) -> Dataset {
        let mut rng = Rng::seed(seed);
        let x = (0..n * features).map(|_| rng.next_f64() as f32).collect();
        let y = (0..n).map(|_| rng.below(10) as u8).collect();
        Dataset::dense(x, y, features)
    }

    fn cfg(work: Work, batch: usize, optimizer: Optimizer, prox_mu: f64) -> TrainConfig {
        TrainConfig {
            work,
            batch,
            optimizer,
            prox_mu,
            dp_sgd: None,
        }
    }

    /// Trains `kind` on both paths with the same seed and checks that they agree: every parameter
    /// within [`TOL`], both mean losses within 1e-5.
    ///
    /// Adam is the exception for the few weights whose gradient is a sum that cancels to about
    /// its eps (1e-8): there `m / (sqrt(v) + eps)` turns rounding noise into a step of up to `lr`,
    /// on either path. For Adam the check is: all within `lr`, all but 1 in 10,000 within TOL.
    fn check(name: &str, kind: &ModelSpec, data: &Dataset, c: &TrainConfig) {
        let (diffs, fast, slow) = compare(kind, data, c);
        let max = diffs.iter().copied().fold(0.0f32, f32::max);
        let off = diffs.iter().filter(|d| **d >= TOL).count();
        if let Optimizer::Adam { lr } = c.optimizer {
            assert!(max < lr as f32, "{name}: max |fast - autograd| = {max}");
            assert!(off <= diffs.len() / 10_000, "{name}: {off} beyond {TOL}");
        } else {
            assert!(max < TOL, "{name}: max |fast - autograd| = {max}");
        }
        assert!((fast - slow).abs() < 1e-5, "{name}: loss {fast} vs {slow}");
    }

    /// Trains `kind` on both paths with the same seed; returns every parameter's difference and
    /// both mean losses.
    fn compare(kind: &ModelSpec, data: &Dataset, c: &TrainConfig) -> (Vec<f32>, f32, f32) {
        let init = kind.init(4);
        let mut fast = init.clone();
        let (fast_loss, fast_steps) =
            train(kind, &mut fast, data, c, &mut Rng::seed(9), None, None).unwrap();
        let model = Model::new(kind, &init, &Device::Cpu).unwrap();
        let (slow_loss, slow_steps) =
            train_model_autograd(&model, data, c, &mut Rng::seed(9), None, None).unwrap();
        assert_eq!(fast_steps, slow_steps);
        let slow = model.flat().unwrap();
        assert_ne!(fast, init, "training moved nothing");
        let diffs = fast.iter().zip(&slow).map(|(a, b)| (a - b).abs()).collect();
        (diffs, fast_loss, slow_loss)
    }

    const SGD: Optimizer = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.0,
    };
    const MOMENTUM: Optimizer = Optimizer::Sgd {
        lr: 0.05,
        momentum: 0.9,
    };
    const ADAM: Optimizer = Optimizer::Adam { lr: 1e-3 };

    /// Largest parameter difference allowed between the two paths: both compute the same sums
    /// in float32, in different orders.
    const TOL: f32 = 1e-6;

    #[test]
    fn matches_autograd_on_the_digits_mlp() {
        let data = crate::data::digits()
            .unwrap()
            .train
            .subset(&(0..150).collect::<Vec<_>>());
        // 150 samples in batches of 16: every epoch ends on a short batch of 6.
        for (name, c) in [
            ("sgd", cfg(Work::Epochs(2), 16, SGD, 0.0)),
            ("momentum", cfg(Work::Epochs(2), 16, MOMENTUM, 0.0)),
            ("adam", cfg(Work::Epochs(2), 16, ADAM, 0.0)),
            ("fedprox sgd", cfg(Work::Steps(15), 16, SGD, 0.5)),
            ("fedprox momentum", cfg(Work::Steps(15), 16, MOMENTUM, 0.5)),
            ("fedprox adam", cfg(Work::Steps(15), 16, ADAM, 0.5)),
        ] {
            check(name, &ModelSpec::digits_mlp(), &data, &c);
        }
    }

    #[test]
    fn matches_autograd_on_the_2nn() {
        let data = noise(40, 784, 2);
        for (name, c) in [
            ("sgd", cfg(Work::Steps(6), 8, SGD, 0.0)),
            ("momentum", cfg(Work::Steps(6), 8, MOMENTUM, 0.0)),
            ("adam", cfg(Work::Steps(6), 8, ADAM, 0.0)),
            ("fedprox momentum", cfg(Work::Epochs(1), 16, MOMENTUM, 0.5)),
        ] {
            check(name, &ModelSpec::mlp(), &data, &c);
        }
    }

    #[test]
    fn matches_autograd_on_declared_mlps_and_softmax_regression() {
        use crate::net::InputShape;
        // 13 features, 3 classes: a three-layer MLP, a one-layer one, softmax regression.
        let mut data = noise(50, 13, 5);
        data.y.iter_mut().for_each(|y| *y %= 3);
        let layers = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for (kind, l) in [
            ("mlp", layers(&["dense:16", "dense:8"])),
            ("mlp", layers(&["dense:5"])),
            ("logistic", Vec::new()),
        ] {
            let spec = ModelSpec::declare(kind, &l, InputShape::Flat(13), 3).unwrap();
            assert!(supports(&spec), "{spec}");
            for (name, c) in [
                ("momentum", cfg(Work::Epochs(2), 8, MOMENTUM, 0.0)),
                ("fedprox sgd", cfg(Work::Steps(9), 8, SGD, 0.5)),
            ] {
                check(&format!("{spec} {name}"), &spec, &data, &c);
            }
        }
    }

    /// The 2NN's shape with tanh after both hidden layers (`dense:200:tanh` twice).
    pub(super) fn tanh_2nn() -> ModelSpec {
        let layers = ["dense:200:tanh".to_string(), "dense:200:tanh".to_string()];
        ModelSpec::declare("mlp", &layers, crate::net::InputShape::MNIST, 10).unwrap()
    }

    #[test]
    fn matches_autograd_with_tanh_layers() {
        use crate::net::InputShape;
        let data = noise(40, 784, 2);
        let tanh = tanh_2nn();
        assert!(supports(&tanh));
        for (name, c) in [
            ("sgd", cfg(Work::Steps(6), 8, SGD, 0.0)),
            ("momentum", cfg(Work::Steps(6), 8, MOMENTUM, 0.0)),
            ("adam", cfg(Work::Steps(6), 8, ADAM, 0.0)),
            ("fedprox momentum", cfg(Work::Epochs(1), 16, MOMENTUM, 0.5)),
        ] {
            check(&format!("tanh 2nn {name}"), &tanh, &data, &c);
        }
        // The activation is not ignored: the same training on the ReLU 2NN (same initial bits)
        // ends elsewhere.
        let c = cfg(Work::Steps(6), 8, SGD, 0.0);
        let trained = |kind: &ModelSpec| {
            let mut p = kind.init(4);
            train(kind, &mut p, &data, &c, &mut Rng::seed(9), None, None).unwrap();
            p
        };
        assert_eq!(tanh.init(4), ModelSpec::mlp().init(4));
        assert!(max_abs_diff(&trained(&tanh), &trained(&ModelSpec::mlp())) > 1e-3);
        // Tanh and ReLU mixed, either way round, on 13 features.
        let mut small = noise(50, 13, 5);
        small.y.iter_mut().for_each(|y| *y %= 3);
        for l in [["dense:16:tanh", "dense:8"], ["dense:16", "dense:8:tanh"]] {
            let l: Vec<String> = l.iter().map(|s| s.to_string()).collect();
            let spec = ModelSpec::declare("mlp", &l, InputShape::Flat(13), 3).unwrap();
            assert!(supports(&spec), "{spec}");
            for (name, c) in [
                ("momentum", cfg(Work::Epochs(2), 8, MOMENTUM, 0.0)),
                ("fedprox sgd", cfg(Work::Steps(9), 8, SGD, 0.5)),
            ] {
                check(&format!("{spec} {name}"), &spec, &small, &c);
            }
        }
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn runs_are_bit_for_bit_reproducible() {
        let data = noise(96, 784, 3);
        for opt in [MOMENTUM, ADAM] {
            let c = cfg(Work::Epochs(2), 32, opt, 0.1);
            let run = || {
                let mut p = ModelSpec::mlp().init(1);
                let (loss, _) = train(
                    &ModelSpec::mlp(),
                    &mut p,
                    &data,
                    &c,
                    &mut Rng::seed(5),
                    None,
                    None,
                )
                .unwrap();
                let bits: Vec<u32> = p.iter().map(|v| v.to_bits()).collect();
                (bits, loss.to_bits())
            };
            assert_eq!(run(), run(), "{opt}");
        }
    }

    #[test]
    fn train_model_keeps_the_model_current_for_progress_callbacks() {
        // The 2NN, whose first layer trains transposed unless a callback may look at the model.
        let kind = &ModelSpec::mlp();
        let data = noise(30, 784, 6);
        let c = cfg(Work::Steps(3), 10, MOMENTUM, 0.0);
        let init = kind.init(2);
        let local =
            crate::train::train_local(kind, &init, &data, &c, &mut Rng::seed(1), &Device::Cpu)
                .unwrap();
        let model = Model::new(kind, &init, &Device::Cpu).unwrap();
        let mut seen = Vec::new();
        let mut on_step = |s: usize, t: usize| seen.push((s, t, model.flat().unwrap()));
        crate::train::train_model(&model, &data, &c, &mut Rng::seed(1), Some(&mut on_step))
            .unwrap();
        let steps: Vec<(usize, usize)> = seen.iter().map(|(s, t, _)| (*s, *t)).collect();
        assert_eq!(steps, [(1, 3), (2, 3), (3, 3)]);
        let flat = model.flat().unwrap();
        assert_ne!(seen[0].2, init, "the model moved by the first callback");
        assert_ne!(seen[0].2, seen[1].2);
        assert_eq!(seen[2].2, flat, "the last callback saw the final model");
        // Same training as train_local (transposed first layer); the delta is taken in f32, so
        // adding it back may also round by one unit.
        let trained: Vec<f32> = init.iter().zip(&local.delta).map(|(a, d)| a + d).collect();
        let diff = trained
            .iter()
            .zip(&flat)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < TOL, "{diff}");
        assert!(!supports(&ModelSpec::cnn()));
        let mut wrong = ModelSpec::digits_mlp().init(2);
        assert!(
            train(
                &ModelSpec::mlp(),
                &mut wrong,
                &data,
                &c,
                &mut Rng::seed(1),
                None,
                None
            )
            .is_err()
        );
        assert_eq!(wrong, ModelSpec::digits_mlp().init(2));
    }
}

#[cfg(test)]
mod dp_tests {
    use candle_core::Device;

    use super::*;
    use crate::train::{TrainConfig, Work, batch_tensors, train_model_autograd};

    use super::tests::{noise as noise_data, tanh_2nn};

    fn digits(n: usize) -> Dataset {
        crate::data::digits()
            .unwrap()
            .train
            .subset(&(0..n).collect::<Vec<_>>())
    }

    fn dp_cfg(work: Work, optimizer: Optimizer, clip: f64, noise: f64, rate: f64) -> TrainConfig {
        TrainConfig {
            work,
            batch: 1,
            optimizer,
            prox_mu: 0.0,
            dp_sgd: Some(DpSgdConfig { clip, noise, rate }),
        }
    }

    const SGD1: Optimizer = Optimizer::Sgd {
        lr: 1.0,
        momentum: 0.0,
    };

    /// Trains on the fast path with `NoiseSource::reproducible(seed, 0)`; returns the parameters.
    fn fast_dp(kind: &ModelSpec, data: &Dataset, c: &TrainConfig, seed: u64) -> Vec<f32> {
        let mut p = kind.init(4);
        let mut noise = NoiseSource::reproducible(seed, 0);
        train(
            kind,
            &mut p,
            data,
            c,
            &mut Rng::seed(1),
            Some(&mut noise),
            None,
        )
        .unwrap();
        p
    }

    /// The same on the autograd path.
    fn autograd_dp(kind: &ModelSpec, data: &Dataset, c: &TrainConfig, seed: u64) -> Vec<f32> {
        let model = Model::new(kind, &kind.init(4), &Device::Cpu).unwrap();
        let mut noise = NoiseSource::reproducible(seed, 0);
        train_model_autograd(&model, data, c, &mut Rng::seed(1), Some(&mut noise), None).unwrap();
        model.flat().unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    fn delta(kind: &ModelSpec, p: &[f32]) -> Vec<f32> {
        p.iter().zip(&kind.init(4)).map(|(a, b)| a - b).collect()
    }

    /// (a) The per-example norms from `||dz_i||^2 (||a_i||^2 + 1)` equal the norms of each
    /// example's gradient from autograd on a batch of one, in both weight layouts.
    #[test]
    fn per_example_norms_match_autograd() {
        for (kind, data) in [
            (&ModelSpec::digits_mlp(), digits(12)),
            (&ModelSpec::mlp(), noise_data(6, 784, 8)),
            (&tanh_2nn(), noise_data(6, 784, 8)),
        ] {
            let init = kind.init(3);
            let model = Model::new(kind, &init, &Device::Cpu).unwrap();
            let slow: Vec<f64> = (0..data.len())
                .map(|i| {
                    let (xs, ys) = batch_tensors(&data, &[i], &Device::Cpu).unwrap();
                    let loss =
                        candle_nn::loss::cross_entropy(&model.forward(&xs).unwrap(), &ys).unwrap();
                    let grads = loss.backward().unwrap();
                    model
                        .vars()
                        .iter()
                        .map(|v| {
                            let g = grads.get(v.as_tensor()).unwrap();
                            crate::dp::l2_norm(&g.flatten_all().unwrap().to_vec1().unwrap()).powi(2)
                        })
                        .sum::<f64>()
                        .sqrt()
                })
                .collect();
            for transpose in [false, true] {
                let mut layers = dense_layers(kind).unwrap();
                let mut p = init.clone();
                for d in &mut layers {
                    d.transposed &= transpose;
                    if d.transposed {
                        transpose_block(&mut p, d.weight, d.out, d.inp);
                    }
                }
                let mut net = Net {
                    layers,
                    params: CpuStorage::F32(p),
                    x: CpuStorage::F32(Vec::new()),
                    labels: Vec::new(),
                    hidden: Vec::new(),
                    bias_grad: Vec::new(),
                };
                net.load(&data, &(0..data.len()).collect::<Vec<_>>())
                    .unwrap();
                let (_, dzs, sq) = net.per_example_pass(data.len()).unwrap();
                assert_eq!(dzs.len(), net.layers.len());
                for (i, (fast, slow)) in sq.iter().map(|s| s.sqrt()).zip(&slow).enumerate() {
                    assert!(
                        (fast - slow).abs() <= 1e-5 * slow,
                        "{kind} example {i}: {fast} vs {slow}"
                    );
                }
            }
        }
    }

    /// (b) With no noise, no effective clipping and q = 1 (every record, divided by N), DP-SGD is
    /// full-batch training on the mean loss, on both paths.
    #[test]
    fn without_noise_or_clipping_it_is_full_batch_training() {
        let data = digits(40);
        let kind = &ModelSpec::digits_mlp();
        let momentum = Optimizer::Sgd {
            lr: 0.1,
            momentum: 0.9,
        };
        for opt in [SGD1, momentum] {
            let plain = TrainConfig {
                work: Work::Steps(2),
                batch: 40,
                optimizer: opt,
                prox_mu: 0.0,
                dp_sgd: None,
            };
            let mut want = kind.init(4);
            train(
                kind,
                &mut want,
                &data,
                &plain,
                &mut Rng::seed(1),
                None,
                None,
            )
            .unwrap();
            let c = dp_cfg(Work::Steps(2), opt, 1e9, 0.0, 1.0);
            let fast = fast_dp(kind, &data, &c, 5);
            let slow = autograd_dp(kind, &data, &c, 5);
            assert_ne!(fast, kind.init(4));
            assert!(max_diff(&fast, &want) < 1e-6, "{opt} fast");
            assert!(max_diff(&slow, &want) < 1e-6, "{opt} autograd");
        }
    }

    /// With no noise, both paths compute the same clipped updates (some examples clipped, some
    /// not) from the same Poisson batches.
    #[test]
    fn fast_and_autograd_dp_agree() {
        for (kind, data, clip) in [
            (&ModelSpec::digits_mlp(), digits(60), 1.0),
            (&ModelSpec::mlp(), noise_data(30, 784, 2), 3.0),
            (&tanh_2nn(), noise_data(30, 784, 2), 1.0),
        ] {
            let momentum = Optimizer::Sgd {
                lr: 0.05,
                momentum: 0.9,
            };
            let c = dp_cfg(Work::Steps(4), momentum, clip, 0.0, 0.3);
            let fast = fast_dp(kind, &data, &c, 6);
            let slow = autograd_dp(kind, &data, &c, 6);
            assert_ne!(fast, kind.init(4));
            let d = max_diff(&fast, &slow);
            assert!(d < 1e-6, "{kind}: {d}");
        }
    }

    /// (c) With a tiny clip every example's contribution has norm C, so one SGD step moves the
    /// parameters by at most `lr C b / (q N)` (b the drawn batch).
    #[test]
    fn tiny_clip_bounds_the_update() {
        let (kind, data) = (&ModelSpec::digits_mlp(), digits(40));
        let (clip, rate) = (1e-2, 0.5);
        let c = dp_cfg(Work::Steps(1), SGD1, clip, 0.0, rate);
        let mut batch = Vec::new();
        NoiseSource::reproducible(7, 0).poisson_sample(40, rate, &mut batch);
        let bound = clip * batch.len() as f64 / (rate * 40.0);
        for p in [fast_dp(kind, &data, &c, 7), autograd_dp(kind, &data, &c, 7)] {
            let norm = crate::dp::l2_norm(&delta(kind, &p));
            assert!(norm <= bound * 1.001, "{norm} > {bound}");
            // The examples' gradients point broadly the same way at the start.
            assert!(norm > bound * 0.1, "{norm} vs {bound}");
        }
        // Unclipped, the same step is far larger.
        let free = dp_cfg(Work::Steps(1), SGD1, 1e9, 0.0, rate);
        let norm = crate::dp::l2_norm(&delta(kind, &fast_dp(kind, &data, &free, 7)));
        assert!(norm > 20.0 * bound, "{norm}");
    }

    /// (d) The update's noise has standard deviation `lr sigma C / (q N)` per coordinate. With a
    /// fixed seed this is deterministic; the tolerances are 6 standard errors of the estimate.
    #[test]
    fn noise_has_std_sigma_c_over_qn() {
        let (sigma, clip, rate, n) = (1.0, 1.0, 0.5, 20);
        let want = sigma * clip / (rate * n as f64);
        let c = dp_cfg(Work::Steps(1), SGD1, clip, sigma, rate);
        // 2NN: 199,210 coordinates, standard error of the std 0.16%; the clipped data moves the
        // parameters by at most C b / (q N) <= 2 in norm, 0.1% of the variance.
        let data = noise_data(n, 784, 3);
        let d = delta(
            &ModelSpec::mlp(),
            &fast_dp(&ModelSpec::mlp(), &data, &c, 11),
        );
        let (mean, std) = moments(&d);
        assert!((std / want - 1.0).abs() < 0.01, "fast: std {std} vs {want}");
        assert!(
            mean.abs() < 6.0 * want / (d.len() as f64).sqrt(),
            "mean {mean}"
        );
        // Digits MLP on autograd: 4,810 coordinates, standard error 1%.
        let data = digits(n);
        let d = delta(
            &ModelSpec::digits_mlp(),
            &autograd_dp(&ModelSpec::digits_mlp(), &data, &c, 11),
        );
        let (_, std) = moments(&d);
        assert!(
            (std / want - 1.0).abs() < 0.06,
            "autograd: std {std} vs {want}"
        );
    }

    fn moments(x: &[f32]) -> (f64, f64) {
        let n = x.len() as f64;
        let mean = x.iter().map(|v| f64::from(*v)).sum::<f64>() / n;
        let var = x
            .iter()
            .map(|v| (f64::from(*v) - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var.sqrt())
    }

    /// (e) The secret keys the batches and the noise: the same secret repeats a run bit for bit,
    /// another gives another; without a secret DP-SGD refuses to train.
    #[test]
    fn the_secret_keys_the_run() {
        let (kind, data) = (&ModelSpec::digits_mlp(), digits(50));
        let c = dp_cfg(Work::Epochs(1), SGD1, 1.0, 1.0, 0.2);
        let run = |secret: [u8; 32]| {
            let mut p = kind.init(4);
            let mut noise = NoiseSource::from_secret(secret);
            let (_, steps) = train(
                kind,
                &mut p,
                &data,
                &c,
                &mut Rng::seed(1),
                Some(&mut noise),
                None,
            )
            .unwrap();
            assert_eq!(steps, 5, "one epoch at q = 0.2");
            p
        };
        let mut other = [9u8; 32];
        other[0] = 10;
        assert_eq!(run([9; 32]), run([9; 32]));
        assert_ne!(run([9; 32]), run(other));
        let mut p = kind.init(4);
        let e = train(kind, &mut p, &data, &c, &mut Rng::seed(1), None, None);
        assert!(matches!(e, Err(Error::DpSgdWithoutSecret)), "{e:?}");
        let e = crate::train::train_local(kind, &p, &data, &c, &mut Rng::seed(1), &Device::Cpu);
        assert!(matches!(e, Err(Error::DpSgdWithoutSecret)), "{e:?}");
    }

    /// An empty Poisson batch still takes a step on the noise alone.
    #[test]
    fn empty_batches_take_noise_only_steps() {
        let (kind, data) = (&ModelSpec::digits_mlp(), digits(10));
        let c = dp_cfg(Work::Steps(3), SGD1, 1.0, 1.0, 1e-9);
        let mut p = kind.init(4);
        let mut noise = NoiseSource::reproducible(1, 0);
        let (loss, steps) = train(
            kind,
            &mut p,
            &data,
            &c,
            &mut Rng::seed(1),
            Some(&mut noise),
            None,
        )
        .unwrap();
        assert_eq!((loss, steps), (0.0, 3));
        let (_, std) = moments(&delta(kind, &p));
        // Three noise-only steps of std C sigma / (q N) = 1e8 each.
        assert!((std / (3f64.sqrt() * 1e8) - 1.0).abs() < 0.06, "{std}");
        let silent = dp_cfg(Work::Steps(3), SGD1, 1.0, 0.0, 1e-9);
        assert_eq!(fast_dp(kind, &data, &silent, 1), kind.init(4));
    }
}
