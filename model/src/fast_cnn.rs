//! Local training of the CNNs (McMahan et al.'s preset and declared ones: convolution stages of
//! conv-ReLU with an optional max pool, then dense layers) without autograd, as [`crate::fast`]
//! does for the MLPs: a hand-written forward and backward pass over one flat parameter vector and
//! buffers reused from step to step.
//!
//! Layout: a stage's input is kept padded and pixel-major (`[b, h + 2 pad, w + 2 pad, cin]`), so
//! the inputs of one kernel row of an output's window are `k cin` contiguous floats. The forward
//! convolution is one product per group of images, `[pixels, k k cin] x [k k cin, cout]`, whose
//! rows are read in place from the padded input ([`crate::conv::conv_gemm`], AVX-512F) or copied
//! into a column matrix for the `gemm` crate (other CPUs, or `cout` not a multiple of 16); bias,
//! ReLU and the max pool are one pass over channels that records each output's argmax
//! ([`crate::conv::pool_pixels`]). The convolution's output gradient is zero but at one pixel per
//! pooling window and channel, so the backward pass sums only those terms: per image, each
//! channel's weight gradient gets `value x window` and each pixel's window in the input gradient
//! `sum value x weights`, both as runs of 8-float segments held in registers
//! ([`crate::conv::seg_sum`], AVX2 + FMA). The dense layers' forward pass and input gradient take
//! [`crate::conv::bcast_gemm`] where the batch is a multiple of 16 (the `gemm` crate otherwise).
//! Every tensor is updated in place by the optimiser of [`crate::fast`] as soon as its gradient
//! exists and the backward pass no longer needs it. Parameter names, shapes and order are the
//! model's ([`crate::net`]): only the way the gradient is computed changes, and the tests below
//! hold it to candle's autograd gradient of the same [`Model`] within 1e-4, on both the AVX-512
//! products and the `gemm` crate's. A step's result depends only on its inputs, the thread
//! count and the CPU's features (which kernels run): every sum has a fixed order.
//!
//! DP-SGD is not implemented here: with `cfg.dp_sgd` set the CNN trains on autograd
//! ([`crate::train::train_model_autograd_dp`]).

use crate::conv::{Cpu, Entry, LANES, Runs, Strided, bcast_gemm, conv_gemm, pool_pixels, seg_sum};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::fast::{Optim, softmax_cross_entropy, write_vars};
use crate::kernels::{ConvGeom, Gemm, Mat, internal};
use crate::net::{Model, ModelSpec};
use crate::rng::Rng;
use crate::spec::{Activation, Op};
use crate::train::{Batches, TrainConfig, check_data};

/// One convolution stage: a `k x k` convolution (stride 1, same padding) from `cin` to `cout`
/// channels on `h x w` images, its bias, a ReLU, and max pooling with window and stride `pool`
/// (1: none).
#[derive(Debug, Clone, Copy)]
struct Stage {
    geom: ConvGeom,
    cout: usize,
    pool: usize,
    /// Offsets of `weight` (`[cout, cin, k, k]`, i.e. `cout x patch` row-major) and `bias`.
    weight: usize,
    bias: usize,
}

impl Stage {
    /// Pooled outputs per output channel.
    fn pooled_pixels(&self) -> usize {
        (self.geom.h / self.pool) * (self.geom.w / self.pool)
    }

    /// Values of one image's output.
    fn out_len(&self) -> usize {
        self.cout * self.pooled_pixels()
    }

    fn pad(&self) -> usize {
        self.geom.k / 2
    }

    /// Columns of the padded input.
    fn wp(&self) -> usize {
        self.geom.w + 2 * self.pad()
    }

    /// Floats of one padded, pixel-major input image (`[h + 2 pad, w + 2 pad, cin]`).
    fn padded(&self) -> usize {
        (self.geom.h + 2 * self.pad()) * self.wp() * self.geom.cin
    }

    /// Floats of one kernel row's inputs, `(kx, ci)`: contiguous in the padded input.
    fn row(&self) -> usize {
        self.geom.k * self.geom.cin
    }

    /// [`Stage::row`] rounded up to whole segments of [`LANES`].
    fn row_lanes(&self) -> usize {
        self.row().div_ceil(LANES) * LANES
    }

    /// Values of one output's patch in the pixel-major order: `k` rows of [`Stage::row_lanes`].
    fn patch_lanes(&self) -> usize {
        self.geom.k * self.row_lanes()
    }

    /// Where the window of output pixel `p` starts in the padded input.
    fn window(&self, p: usize) -> usize {
        let w = self.geom.w;
        ((p / w) * self.wp() + p % w) * self.geom.cin
    }

    /// Where input pixel `p` sits in the padded input.
    fn interior(&self, p: usize) -> usize {
        self.window(p) + self.pad() * (self.wp() + 1) * self.geom.cin
    }

    /// Images per matrix product: the column matrix of a group stays within about 2 MB.
    fn group(&self, b: usize) -> usize {
        (GROUP_FLOATS / (self.patch_lanes() * self.geom.pixels()).max(1)).clamp(1, b.max(1))
    }
}

/// Floats of column matrix per group (2 MB).
const GROUP_FLOATS: usize = 1 << 19;

/// A dense layer `out x inp` with its bias; a ReLU follows all but the last.
#[derive(Debug, Clone, Copy)]
struct Dense {
    inp: usize,
    out: usize,
    weight: usize,
    bias: usize,
}

/// The layers of a supported CNN, read off its ops and canonical layout.
#[derive(Debug, Clone)]
struct Plan {
    stages: Vec<Stage>,
    dense: Vec<Dense>,
}

/// The stages and dense layers of `kind`, or `None` when its ops are not
/// `ToImage, (Conv, [MaxPool])+, Flatten, Dense+`.
fn plan(kind: &ModelSpec) -> Option<Plan> {
    if kind.custom_recipe().is_some() || kind.lm_config().is_some() {
        return None;
    }
    let mut offsets = std::collections::HashMap::new();
    let mut off = 0;
    for spec in kind.layout() {
        let n = spec.numel();
        offsets.insert(spec.name, (off, spec.shape));
        off += n;
    }
    let at = |name: &str, shape: &[usize]| -> Option<usize> {
        let (o, s) = offsets.get(name)?;
        (s.as_slice() == shape).then_some(*o)
    };
    let ops = kind.ops().ok()?;
    let mut it = ops.into_iter().peekable();
    let Some(Op::ToImage {
        channels,
        height,
        width,
    }) = it.next()
    else {
        return None;
    };
    let (mut c, mut h, mut w) = (channels, height, width);
    let mut stages = Vec::new();
    while let Some(Op::Conv {
        name,
        cin,
        cout,
        kernel,
    }) = it.next_if(|op| matches!(op, Op::Conv { .. }))
    {
        // Argmax indices are u32 within one image's convolution output.
        if cin != c || kernel % 2 == 0 || u32::try_from(cout * h * w).is_err() {
            return None;
        }
        let pool = match it.next_if(|op| matches!(op, Op::MaxPool { .. })) {
            Some(Op::MaxPool { size }) if size >= 1 && size <= h && size <= w => size,
            Some(_) => return None,
            None => 1,
        };
        stages.push(Stage {
            geom: ConvGeom {
                cin,
                h,
                w,
                k: kernel,
            },
            cout,
            pool,
            weight: at(&format!("{name}.weight"), &[cout, cin, kernel, kernel])?,
            bias: at(&format!("{name}.bias"), &[cout])?,
        });
        (c, h, w) = (cout, h / pool, w / pool);
    }
    if stages.is_empty() || it.next() != Some(Op::Flatten) {
        return None;
    }
    let mut inp = c * h * w;
    let mut dense = Vec::new();
    let rest: Vec<Op> = it.collect();
    let count = rest.len();
    for (i, op) in rest.into_iter().enumerate() {
        let Op::Dense {
            name,
            inp: i_n,
            out,
            activation,
        } = op
        else {
            return None;
        };
        // Hidden dense layers take a ReLU here (a tanh is the autograd path's).
        let hidden = (i + 1 < count).then_some(Activation::Relu);
        if i_n != inp || activation != hidden {
            return None;
        }
        dense.push(Dense {
            inp,
            out,
            weight: at(&format!("{name}.weight"), &[out, inp])?,
            bias: at(&format!("{name}.bias"), &[out])?,
        });
        inp = out;
    }
    (!dense.is_empty() && inp == kind.classes() && off == kind.num_params())
        .then_some(Plan { stages, dense })
}

/// Whether [`train`] handles `kind` (DP-SGD aside).
pub fn supports(kind: &ModelSpec) -> bool {
    plan(kind).is_some()
}

/// Buffers, sized for the largest batch and reused by every step.
///
/// A stage's input is kept padded and pixel-major (`[b, h + 2 pad, w + 2 pad, cin]`, borders
/// zero): the inputs of one kernel row of an output's window, `(kx, ci)`, are then contiguous.
/// The forward pass copies each output's `k` rows into a column matrix (one row per output
/// pixel) and multiplies it by the weights reordered to `[cout, ky, kx, ci]`; the pooled stage's
/// backward pass reads the same rows straight from the padded input ([`crate::conv::seg_sum`]).
struct Net {
    plan: Plan,
    gemm: Gemm,
    cpu: Cpu,
    /// The flat parameters, canonical order.
    params: Vec<f32>,
    /// The input batch `[b, features]` and its labels.
    x: Vec<f32>,
    labels: Vec<u8>,
    /// Per stage: its padded, pixel-major input, plus [`LANES`] floats of slack (a segment may
    /// read past the last row).
    inputs: Vec<Vec<f32>>,
    /// Per stage: the weights as `[cout, k, row_lanes]` (rows `(kx, ci)`; lanes past `k cin`
    /// stay zero), rebuilt from `params` by every forward pass.
    wt: Vec<Vec<f32>>,
    /// Per stage: `wt` transposed, `[k row_lanes, cout]` ([`bcast_gemm`]'s operand).
    wt_t: Vec<Vec<f32>>,
    /// Per stage: the pooled outputs `[b, pooled pixels, cout]` and, for each, the pixel of its
    /// convolution output that it came from (`u32::MAX` where the ReLU is off).
    pooled: Vec<Vec<f32>>,
    argmax: Vec<Vec<u32>>,
    /// The last stage's output in the model's flatten order `[b, cout, h/p, w/p]`.
    flat: Vec<f32>,
    /// Post-ReLU outputs of the dense layers but the last, `[b, out]`.
    hidden: Vec<Vec<f32>>,
    /// A dense layer's input and output transposed (`[inp, b]`, then `[out, b]`).
    transposed: Vec<f32>,
    /// A group's column matrix `[images x pixels, patch_lanes]`.
    cols: Vec<f32>,
    /// A group's convolution output `[images x pixels, cout]`.
    conv: Vec<f32>,
    /// The gradient being backpropagated (`up`) and the one below it (`down`): `[b, width]` for
    /// dense layers, `[b, padded]` (the layout of the stage's input) below a stage.
    up: Vec<f32>,
    down: Vec<f32>,
    /// A weight's and a bias's gradient, canonical order.
    grad: Vec<f32>,
    bias_grad: Vec<f32>,
    /// A stage's weight gradient in the layout of `wt`.
    grad_wt: Vec<f32>,
    /// Per stage: the offsets of its segments of [`LANES`] in a patch of `wt` (`ky row_lanes +
    /// j`) and in the padded input from a window's start (`ky wp cin + j`).
    wt_segs: Vec<Vec<usize>>,
    input_segs: Vec<Vec<usize>>,
    /// One image's nonzero output gradients of a stage, channel by channel: (pixel, channel,
    /// value).
    nonzero: Vec<(u32, u32, f32)>,
    /// The same as terms of [`seg_sum`], and where each channel's or pixel's run starts.
    entries: Vec<Entry>,
    starts: Vec<usize>,
}

impl Net {
    fn new(plan: Plan, params: Vec<f32>, batch: usize, features: usize) -> Self {
        let mut cols = 0;
        let mut conv = 0;
        for s in &plan.stages {
            let g = s.group(batch);
            cols = cols.max(s.patch_lanes() * s.geom.pixels() * g);
            conv = conv.max(s.cout * s.geom.pixels() * g);
        }
        let widest = plan
            .stages
            .iter()
            .map(|s| s.padded().max(s.out_len()))
            .chain(plan.dense.iter().map(|d| d.inp.max(d.out)))
            .max()
            .unwrap_or(0);
        let weights = plan
            .stages
            .iter()
            .map(|s| s.cout * s.geom.patch().max(s.patch_lanes()))
            .chain(plan.dense.iter().map(|d| d.out * d.inp))
            .max()
            .unwrap_or(0);
        let segs = |s: &Stage, stride: usize| -> Vec<usize> {
            (0..s.geom.k)
                .flat_map(|ky| {
                    (0..s.row_lanes())
                        .step_by(LANES)
                        .map(move |j| ky * stride + j)
                })
                .collect()
        };
        let last = plan.stages.last().map_or(0, Stage::out_len);
        let plan_dense_width = plan.dense.iter().map(|d| d.inp + d.out).max().unwrap_or(0);
        Net {
            inputs: plan
                .stages
                .iter()
                .map(|s| vec![0.0; batch * s.padded() + LANES])
                .collect(),
            wt: plan
                .stages
                .iter()
                .map(|s| vec![0.0; s.cout * s.patch_lanes()])
                .collect(),
            wt_t: plan
                .stages
                .iter()
                .map(|s| vec![0.0; s.cout * s.patch_lanes()])
                .collect(),
            pooled: plan
                .stages
                .iter()
                .map(|s| vec![0.0; batch * s.out_len()])
                .collect(),
            argmax: plan
                .stages
                .iter()
                .map(|s| vec![0; batch * s.out_len()])
                .collect(),
            wt_segs: plan.stages.iter().map(|s| segs(s, s.row_lanes())).collect(),
            input_segs: plan
                .stages
                .iter()
                .map(|s| segs(s, s.wp() * s.geom.cin))
                .collect(),
            hidden: plan
                .dense
                .iter()
                .map(|d| vec![0.0; batch * d.out])
                .collect(),
            plan,
            gemm: Gemm::new(),
            cpu: Cpu::detect(),
            params,
            x: vec![0.0; batch * features],
            labels: vec![0; batch],
            flat: vec![0.0; batch * last],
            transposed: vec![0.0; batch * plan_dense_width],
            cols: vec![0.0; cols],
            conv: vec![0.0; conv],
            up: vec![0.0; batch * widest + LANES],
            down: vec![0.0; batch * widest + LANES],
            grad: vec![0.0; weights],
            bias_grad: Vec::new(),
            grad_wt: vec![0.0; weights],
            nonzero: Vec::new(),
            entries: Vec::new(),
            starts: Vec::new(),
        }
    }

    /// Copies the records `idx` of `data` into the first rows of `x` and `labels`.
    fn load(&mut self, data: &Dataset, idx: &[usize]) -> Result<()> {
        let f = data.features;
        if self.x.len() < idx.len() * f || self.labels.len() < idx.len() {
            return Err(internal(format!(
                "batch of {} beyond the buffers",
                idx.len()
            )));
        }
        for ((row, label), &i) in self.x.chunks_exact_mut(f).zip(&mut self.labels).zip(idx) {
            data.row_into(i, row);
            *label = data.y[i];
        }
        Ok(())
    }

    /// Forward pass of stage `s` over `b` images: its pooled output goes to the next stage's
    /// padded input, or to `flat` after the last stage.
    fn stage_forward(&mut self, s: usize, b: usize) -> Result<()> {
        let st = self.plan.stages[s];
        let g = st.geom;
        let (cin, k, pix) = (g.cin, g.k, g.pixels());
        let (row, row_lanes, patch_lanes, padded) =
            (st.row(), st.row_lanes(), st.patch_lanes(), st.padded());
        let opix = st.pooled_pixels();
        // The weights in the pixel-major order: the optimiser moved them since the last step.
        let wt = &mut self.wt[s];
        let weight = &self.params[st.weight..st.weight + st.cout * g.patch()];
        for (c, w) in weight.chunks_exact(g.patch()).enumerate() {
            for ci in 0..cin {
                for ky in 0..k {
                    for kx in 0..k {
                        wt[(c * k + ky) * row_lanes + kx * cin + ci] = w[(ci * k + ky) * k + kx];
                    }
                }
            }
        }
        let wt_t = &mut self.wt_t[s];
        for (c, w) in wt.chunks_exact(patch_lanes).enumerate() {
            for (j, &v) in w.iter().enumerate() {
                wt_t[j * st.cout + c] = v;
            }
        }
        let (below, rest) = self.inputs.split_at_mut(s + 1);
        let input = &mut below[s];
        if s == 0 {
            for (n, image) in self.x.chunks_exact(g.image()).take(b).enumerate() {
                let dst = &mut input[n * padded..(n + 1) * padded];
                for (ci, plane) in image.chunks_exact(pix).enumerate() {
                    for (p, &v) in plane.iter().enumerate() {
                        dst[st.interior(p) + ci] = v;
                    }
                }
            }
        }
        let input = &*input;
        let bias = &self.params[st.bias..st.bias + st.cout];
        let pooled = &mut self.pooled[s];
        let argmax = &mut self.argmax[s];
        let group = st.group(b);
        let stride = st.wp() * cin;
        for g0 in (0..b).step_by(group) {
            let gn = group.min(b - g0);
            // Each output pixel's window read in place from the padded input (AVX-512F), else
            // copied into a column matrix for the gemm crate.
            self.starts.clear();
            self.starts.extend(
                (g0..g0 + gn).flat_map(|n| (0..pix).map(move |p| n * padded + st.window(p))),
            );
            let runs = Runs {
                data: input,
                starts: &self.starts,
                segs: k,
                step: stride,
                len: row,
            };
            let strides = (st.cout, row_lanes * st.cout);
            if !conv_gemm(
                self.cpu,
                &mut self.conv,
                st.cout,
                runs,
                wt_t,
                strides,
                st.cout,
            ) {
                for (cols, &at) in self.cols.chunks_exact_mut(patch_lanes).zip(&self.starts) {
                    for (ky, dst) in cols.chunks_exact_mut(row_lanes).enumerate() {
                        let from = at + ky * stride;
                        dst[..row].copy_from_slice(&input[from..from + row]);
                        dst[row..].fill(0.0);
                    }
                }
                self.gemm.run(
                    &mut self.conv,
                    Mat::rows(gn * pix, st.cout),
                    false,
                    &self.cols,
                    Mat::rows(gn * pix, patch_lanes),
                    wt,
                    Mat::rows(st.cout, patch_lanes).t(),
                )?;
            }
            let out = opix * st.cout;
            for (i, conv) in self.conv.chunks_exact(pix * st.cout).take(gn).enumerate() {
                let n = g0 + i;
                pool_pixels(
                    self.cpu,
                    conv,
                    (g.h, g.w, st.cout),
                    st.pool,
                    bias,
                    &mut pooled[n * out..(n + 1) * out],
                    &mut argmax[n * out..(n + 1) * out],
                );
            }
        }
        let out = &pooled[..b * opix * st.cout];
        match (rest.first_mut(), self.plan.stages.get(s + 1)) {
            (Some(next_input), Some(next)) => {
                let np = next.padded();
                for (n, image) in out.chunks_exact(opix * st.cout).enumerate() {
                    let dst = &mut next_input[n * np..(n + 1) * np];
                    for (q, v) in image.chunks_exact(st.cout).enumerate() {
                        let at = next.interior(q);
                        dst[at..at + st.cout].copy_from_slice(v);
                    }
                }
            }
            _ => {
                for (image, dst) in out
                    .chunks_exact(opix * st.cout)
                    .zip(self.flat.chunks_exact_mut(opix * st.cout))
                {
                    for (q, v) in image.chunks_exact(st.cout).enumerate() {
                        for (c, &v) in v.iter().enumerate() {
                            dst[c * opix + q] = v;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Forward pass of dense layer `l` over `b` rows; the last layer's logits go to `up`.
    fn dense_forward(&mut self, l: usize, b: usize) -> Result<()> {
        let d = self.plan.dense[l];
        let last = l + 1 == self.plan.dense.len();
        let (below, rest) = self.hidden.split_at_mut(l);
        let input: &[f32] = match below.last() {
            Some(h) => h,
            None => &self.flat,
        };
        let out: &mut [f32] = if last { &mut self.up } else { &mut rest[0] };
        let weight = &self.params[d.weight..d.weight + d.out * d.inp];
        let bias = &self.params[d.bias..d.bias + d.out];
        let act = |v: f32, bb: f32| if last { v + bb } else { (v + bb).max(0.0) };
        if self.cpu.bcast(b) {
            // out^T = W input^T, the batch as [`bcast_gemm`]'s contiguous columns.
            let (t_in, t_out) = self.transposed.split_at_mut(b * d.inp);
            for (n, row) in input[..b * d.inp].chunks_exact(d.inp).enumerate() {
                for (i, &v) in row.iter().enumerate() {
                    t_in[i * b + n] = v;
                }
            }
            let w = Strided {
                data: weight,
                rs: d.inp,
                cs: 1,
            };
            bcast_gemm(self.cpu, t_out, b, w, t_in, b, (d.out, b, d.inp));
            for (n, row) in out[..b * d.out].chunks_exact_mut(d.out).enumerate() {
                for (o, (v, &bb)) in row.iter_mut().zip(bias).enumerate() {
                    *v = act(t_out[o * b + n], bb);
                }
            }
            return Ok(());
        }
        self.gemm.run(
            out,
            Mat::rows(b, d.out),
            false,
            input,
            Mat::rows(b, d.inp),
            weight,
            Mat::rows(d.out, d.inp).t(),
        )?;
        for row in out[..b * d.out].chunks_exact_mut(d.out) {
            for (v, &bb) in row.iter_mut().zip(bias) {
                *v = act(*v, bb);
            }
        }
        Ok(())
    }

    /// The bias gradient: column sums of `up` (`b x width`).
    fn sum_rows(&mut self, b: usize, width: usize) {
        self.bias_grad.clear();
        self.bias_grad.resize(width, 0.0);
        for row in self.up[..b * width].chunks_exact(width) {
            for (s, v) in self.bias_grad.iter_mut().zip(row) {
                *s += v;
            }
        }
    }

    /// Backward pass of dense layer `l` from its output gradient in `up`: `down` gets the input
    /// gradient (masked by the ReLU of the layer below, for `l > 0`); then the layer updates.
    fn dense_backward(&mut self, l: usize, b: usize, opt: &mut Optim) -> Result<()> {
        let d = self.plan.dense[l];
        let w = d.weight..d.weight + d.out * d.inp;
        let input: &[f32] = match l.checked_sub(1) {
            Some(h) => &self.hidden[h],
            None => &self.flat,
        };
        // dA = dZ W, before W changes.
        let dz = Strided {
            data: &self.up,
            rs: d.out,
            cs: 1,
        };
        let weight = &self.params[w.clone()];
        if !bcast_gemm(
            self.cpu,
            &mut self.down,
            d.inp,
            dz,
            weight,
            d.inp,
            (b, d.inp, d.out),
        ) {
            self.gemm.run(
                &mut self.down,
                Mat::rows(b, d.inp),
                false,
                &self.up,
                Mat::rows(b, d.out),
                weight,
                Mat::rows(d.out, d.inp),
            )?;
        }
        if l > 0 {
            for (g, a) in self.down[..b * d.inp].iter_mut().zip(input) {
                if *a <= 0.0 {
                    *g = 0.0;
                }
            }
        }
        // dW = dZ^T A (the gemm crate: 6.4 MB of output for the preset's first layer, where
        // `bcast_gemm` measured slower).
        self.gemm.run(
            &mut self.grad,
            Mat::rows(d.out, d.inp),
            false,
            &self.up,
            Mat::rows(b, d.out).t(),
            input,
            Mat::rows(b, d.inp),
        )?;
        opt.apply(&mut self.params, d.weight, &self.grad[..d.out * d.inp]);
        self.sum_rows(b, d.out);
        opt.apply(&mut self.params, d.bias, &self.bias_grad);
        Ok(())
    }

    /// Backward pass of stage `s` from the gradient of its output in `up` (`[b, cout, h/p,
    /// w/p]` for the last stage, else the next stage's padded input layout): `down` gets the
    /// gradient of its input in its padded layout (not for the first stage); then the stage
    /// updates.
    ///
    /// The output gradient of the convolution is zero but at one pixel per pooling window and
    /// channel (and none where the ReLU was off), so only those terms are summed: per image, each
    /// channel's weight gradient gets `value x window` for each of its nonzeros (the window's `k`
    /// rows read from the padded input), and each pixel's window in `down` gets `sum value x
    /// weights` over the channels that are nonzero there.
    fn stage_backward(&mut self, s: usize, b: usize, opt: &mut Optim) -> Result<()> {
        let st = self.plan.stages[s];
        let g = st.geom;
        let (cin, k, pix) = (g.cin, g.k, g.pixels());
        let (row_lanes, patch_lanes, padded) = (st.row_lanes(), st.patch_lanes(), st.padded());
        let opix = st.pooled_pixels();
        let out = opix * st.cout;
        // Where `up` holds the gradient of output (image n, pooled pixel q, channel c):
        // n * per_image + at(q) + c * channel.
        let next = self.plan.stages.get(s + 1).copied();
        let (per_image, channel) = match next {
            Some(next) => (next.padded(), 1),
            None => (out, opix),
        };
        let at = |q: usize| next.map_or(q, |next| next.interior(q));
        let grad_wt = &mut self.grad_wt[..st.cout * patch_lanes];
        grad_wt.fill(0.0);
        self.bias_grad.clear();
        self.bias_grad.resize(st.cout, 0.0);
        let (wt_segs, input_segs) = (&self.wt_segs[s], &self.input_segs[s]);
        let argmax = &self.argmax[s];
        for n in 0..b {
            let up = &self.up[n * per_image..(n + 1) * per_image];
            let arg = &argmax[n * out..(n + 1) * out];
            self.nonzero.clear();
            self.entries.clear();
            self.starts.clear();
            for c in 0..st.cout {
                self.starts.push(self.entries.len());
                for q in 0..opix {
                    let p = arg[q * st.cout + c];
                    if p == u32::MAX {
                        continue;
                    }
                    let dv = up[at(q) + c * channel];
                    self.bias_grad[c] += dv;
                    if dv != 0.0 {
                        self.nonzero.push((p, c as u32, dv));
                        self.entries.push((st.window(p as usize) as u32, dv));
                    }
                }
            }
            self.starts.push(self.entries.len());
            let image = &self.inputs[s][n * padded..];
            for (c, run) in self.starts.windows(2).enumerate() {
                seg_sum(
                    self.cpu,
                    grad_wt,
                    c * patch_lanes,
                    wt_segs,
                    image,
                    input_segs,
                    &self.entries[run[0]..run[1]],
                );
            }
            if s == 0 {
                continue;
            }
            // The same nonzeros by pixel (a counting sort; channels stay in order), as terms
            // over the weights.
            self.starts.clear();
            self.starts.resize(pix + 1, 0);
            for &(p, _, _) in &self.nonzero {
                self.starts[p as usize + 1] += 1;
            }
            for i in 0..pix {
                self.starts[i + 1] += self.starts[i];
            }
            self.entries.clear();
            self.entries.resize(self.nonzero.len(), (0, 0.0));
            let mut fill = self.starts[..pix].to_vec();
            for &(p, c, dv) in &self.nonzero {
                let slot = &mut fill[p as usize];
                self.entries[*slot] = ((c as usize * patch_lanes) as u32, dv);
                *slot += 1;
            }
            let down = &mut self.down[n * padded..];
            down[..padded].fill(0.0);
            for (p, run) in self.starts.windows(2).enumerate() {
                if run[0] < run[1] {
                    seg_sum(
                        self.cpu,
                        down,
                        st.window(p),
                        input_segs,
                        &self.wt[s],
                        wt_segs,
                        &self.entries[run[0]..run[1]],
                    );
                }
            }
        }
        let grad = &mut self.grad[..st.cout * g.patch()];
        for (c, w) in grad.chunks_exact_mut(g.patch()).enumerate() {
            for ci in 0..cin {
                for ky in 0..k {
                    for kx in 0..k {
                        w[(ci * k + ky) * k + kx] =
                            grad_wt[(c * k + ky) * row_lanes + kx * cin + ci];
                    }
                }
            }
        }
        opt.apply(&mut self.params, st.weight, grad);
        opt.apply(&mut self.params, st.bias, &self.bias_grad);
        Ok(())
    }

    /// One minibatch step on the first `b` rows of `x`; returns the batch's mean loss.
    fn step(&mut self, b: usize, opt: &mut Optim) -> Result<f32> {
        for s in 0..self.plan.stages.len() {
            self.stage_forward(s, b)?;
        }
        for l in 0..self.plan.dense.len() {
            self.dense_forward(l, b)?;
        }
        let classes = self.plan.dense.last().map_or(0, |d| d.out);
        let loss = softmax_cross_entropy(
            &mut self.up[..b * classes],
            &self.labels[..b],
            classes,
            1.0 / b as f32,
        );
        opt.begin_step();
        for l in (0..self.plan.dense.len()).rev() {
            self.dense_backward(l, b, opt)?;
            std::mem::swap(&mut self.up, &mut self.down);
        }
        for s in (0..self.plan.stages.len()).rev() {
            self.stage_backward(s, b, opt)?;
            std::mem::swap(&mut self.up, &mut self.down);
        }
        Ok(loss)
    }
}

/// Called after every step with (step, total steps, the parameters).
type OnStep<'a> = dyn FnMut(usize, usize, &[f32]) -> Result<()> + 'a;

/// Trains the flat parameters `params` (canonical order) of a CNN `kind` in place, as
/// [`crate::train::train_model_autograd`] does (same batch schedule from `rng`, optimiser, FedProx
/// and loss); returns (mean minibatch loss, steps). `progress` gets (step, total steps) after
/// every step, with `params` current only once this returns. DP-SGD is refused (see the module
/// documentation).
pub fn train(
    kind: &ModelSpec,
    params: &mut Vec<f32>,
    data: &Dataset,
    cfg: &TrainConfig,
    rng: &mut Rng,
    mut progress: Option<&mut OnStep<'_>>,
) -> Result<(f32, usize)> {
    if cfg.dp_sgd.is_some() {
        return Err(internal("DP-SGD trains the CNN on autograd"));
    }
    let plan = plan(kind).ok_or_else(|| internal(format!("{kind} is not a supported CNN")))?;
    if params.len() != kind.num_params() {
        return Err(Error::WrongLength {
            got: params.len(),
            expected: kind.num_params(),
        });
    }
    if !check_data(kind, data)? {
        return Ok((0.0, 0));
    }
    let mut batches = Batches::new(data.len(), cfg);
    let total = batches.total_steps;
    let mut opt = Optim::new(cfg, params);
    let mut net = Net::new(plan, std::mem::take(params), batches.batch(), data.features);
    let mut run = || -> Result<f64> {
        let mut loss_sum = 0.0f64;
        for step in 0..total {
            let idx = batches.next(rng);
            let b = idx.len();
            net.load(data, idx)?;
            loss_sum += f64::from(net.step(b, &mut opt)?);
            if let Some(p) = progress.as_mut() {
                p(step + 1, total, &net.params)?;
            }
        }
        Ok(loss_sum)
    };
    let result = run();
    // Hand the parameters back whatever happened.
    *params = std::mem::take(&mut net.params);
    Ok(((result? / total.max(1) as f64) as f32, total))
}

/// [`crate::train::train_model`] for a CNN `model` on the CPU: trains its variables in place.
/// With a `progress` callback the variables are brought up to date before every call (a caller
/// may evaluate the model from it), a copy of the parameters per step.
pub fn train_model(
    model: &Model,
    data: &Dataset,
    cfg: &TrainConfig,
    rng: &mut Rng,
    progress: Option<&mut dyn FnMut(usize, usize)>,
) -> Result<(f32, usize)> {
    let mut params = model.flat()?;
    let out = match progress {
        None => train(model.spec(), &mut params, data, cfg, rng, None)?,
        Some(p) => train(
            model.spec(),
            &mut params,
            data,
            cfg,
            rng,
            Some(&mut |step, total, now: &[f32]| {
                write_vars(model, now)?;
                p(step, total);
                Ok(())
            }),
        )?,
    };
    write_vars(model, &params)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::net::InputShape;
    use crate::train::{Optimizer, Work, batch_tensors, train_model_autograd};

    /// `n` samples of `features` values in [-1, 1) with seeded labels below `classes` (centred,
    /// so that the small models' ReLUs are neither all on nor all off).
    fn noise(n: usize, features: usize, classes: usize, seed: u64) -> Dataset {
        let mut rng = Rng::seed(seed);
        let x = (0..n * features)
            .map(|_| rng.next_f64() as f32 * 2.0 - 1.0)
            .collect();
        let y = (0..n).map(|_| rng.below(classes) as u8).collect();
        Dataset::dense(x, y, features)
    }

    /// Small CNNs that cover what the preset does not: three input channels, sides that pooling
    /// does not divide, a stage without pooling, a window of 3, a 5x5 kernel wider than padding.
    fn declared() -> Vec<ModelSpec> {
        let layers = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let rgb = InputShape::Image {
            channels: 3,
            height: 9,
            width: 7,
        };
        let gray = InputShape::Image {
            channels: 1,
            height: 8,
            width: 8,
        };
        vec![
            ModelSpec::declare(
                "cnn",
                &layers(&["conv3x3:4", "maxpool2", "conv3x3:3", "dense:5"]),
                rgb,
                4,
            )
            .unwrap(),
            ModelSpec::declare("cnn", &layers(&["conv5x5:2", "maxpool3"]), gray, 3).unwrap(),
            // 16 and 32 output channels: the AVX-512 products where the CPU has them (3 and 16
            // input channels: kernel rows of 9 and 48 floats).
            ModelSpec::declare(
                "cnn",
                &layers(&[
                    "conv3x3:16",
                    "maxpool2",
                    "conv3x3:32",
                    "dense:16",
                    "dense:5",
                ]),
                rgb,
                4,
            )
            .unwrap(),
        ]
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

    /// The mean loss of all of `data` at `params` and its gradient (canonical order), from
    /// candle's autograd through [`Model`]: the model's definition.
    fn autograd_gradient(kind: &ModelSpec, params: &[f32], data: &Dataset) -> (f32, Vec<f32>) {
        let model = Model::new(kind, params, &Device::Cpu).unwrap();
        let idx: Vec<usize> = (0..data.len()).collect();
        let (xs, ys) = batch_tensors(data, &idx, &Device::Cpu).unwrap();
        let loss = model.loss(&model.forward(&xs).unwrap(), &ys).unwrap();
        let grads = loss.backward().unwrap();
        let g = model
            .vars()
            .iter()
            .flat_map(|v| {
                let g = grads.get(v.as_tensor()).unwrap();
                g.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            })
            .collect();
        (loss.to_scalar::<f32>().unwrap(), g)
    }

    /// The same from this module's training step: one SGD step at learning rate 1 on the whole
    /// of `data` as one batch moves the parameters by minus the gradient.
    fn fast_gradient(kind: &ModelSpec, params: &[f32], data: &Dataset) -> (f32, Vec<f32>) {
        let sgd = Optimizer::Sgd {
            lr: 1.0,
            momentum: 0.0,
        };
        let c = cfg(Work::Steps(1), data.len(), sgd, 0.0);
        let mut p = params.to_vec();
        let (loss, steps) = train(kind, &mut p, data, &c, &mut Rng::seed(1), None).unwrap();
        assert_eq!(steps, 1);
        (loss, params.iter().zip(&p).map(|(a, b)| a - b).collect())
    }

    #[test]
    fn loss_and_gradients_equal_autograds_on_a_seeded_batch() {
        // A batch of 16: the dense layers' AVX-512 products where the CPU has them.
        let mut cases = vec![(ModelSpec::cnn(), 6), (ModelSpec::cnn(), 16)];
        cases.extend(declared().into_iter().map(|k| (k, 6)));
        cases.push((declared()[2].clone(), 16));
        for (kind, n) in &cases {
            assert!(supports(kind), "{kind}");
            let data = noise(*n, kind.input_features(), kind.classes(), 3);
            let params = kind.init(5);
            let (fast_loss, fast) = fast_gradient(kind, &params, &data);
            let (slow_loss, slow) = autograd_gradient(kind, &params, &data);
            assert!((fast_loss - slow_loss).abs() < 1e-5, "{kind}: loss");
            let mut off = 0;
            for spec in kind.layout() {
                let r = off..off + spec.numel();
                off = r.end;
                let (f, s) = (&fast[r.clone()], &slow[r]);
                let diff = f
                    .iter()
                    .zip(s)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                let norm = crate::dp::l2_norm(s);
                assert!(diff < 1e-4, "{kind} {}: max diff {diff}", spec.name);
                assert!(norm > 1e-4, "{kind} {}: gradient {norm}", spec.name);
                let rel =
                    crate::dp::l2_norm(&f.iter().zip(s).map(|(a, b)| a - b).collect::<Vec<_>>())
                        / norm;
                assert!(rel < 1e-3, "{kind} {}: relative {rel}", spec.name);
            }
        }
    }

    #[test]
    fn training_matches_autograd_and_repeats_bit_for_bit() {
        let momentum = Optimizer::Sgd {
            lr: 0.05,
            momentum: 0.9,
        };
        let sgd = Optimizer::Sgd {
            lr: 0.1,
            momentum: 0.0,
        };
        let mut cases = vec![(ModelSpec::cnn(), cfg(Work::Steps(3), 4, momentum, 0.0))];
        for kind in declared() {
            // 10 samples in batches of 4: the epochs end on a short batch of 2.
            cases.push((kind.clone(), cfg(Work::Epochs(2), 4, momentum, 0.0)));
            cases.push((kind, cfg(Work::Steps(5), 4, sgd, 0.5)));
        }
        for (kind, c) in &cases {
            let data = noise(10, kind.input_features(), kind.classes(), 8);
            let init = kind.init(2);
            let run = || {
                let mut p = init.clone();
                let out = train(kind, &mut p, &data, c, &mut Rng::seed(9), None).unwrap();
                (p, out)
            };
            let (fast, (fast_loss, steps)) = run();
            let (again, (again_loss, _)) = run();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast), bits(&again), "{kind}");
            assert_eq!(fast_loss.to_bits(), again_loss.to_bits());
            let model = Model::new(kind, &init, &Device::Cpu).unwrap();
            let (slow_loss, slow_steps) =
                train_model_autograd(&model, &data, c, &mut Rng::seed(9), None, None).unwrap();
            assert_eq!(steps, slow_steps);
            let slow = model.flat().unwrap();
            assert_ne!(fast, init, "training moved nothing");
            let diff = fast
                .iter()
                .zip(&slow)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(diff < 1e-4, "{kind} {c:?}: max |fast - autograd| = {diff}");
            assert!((fast_loss - slow_loss).abs() < 1e-5, "{kind}: loss");
        }
    }

    #[test]
    fn train_paths_take_it_and_progress_sees_the_current_model() {
        let kind = &declared()[0];
        let data = noise(12, kind.input_features(), kind.classes(), 4);
        let momentum = Optimizer::Sgd {
            lr: 0.05,
            momentum: 0.9,
        };
        let c = cfg(Work::Steps(3), 4, momentum, 0.0);
        let init = kind.init(1);
        let mut direct = init.clone();
        train(kind, &mut direct, &data, &c, &mut Rng::seed(1), None).unwrap();
        let local =
            crate::train::train_local(kind, &init, &data, &c, &mut Rng::seed(1), &Device::Cpu)
                .unwrap();
        let via_local: Vec<f32> = init.iter().zip(&local.delta).map(|(a, d)| a + d).collect();
        let diff = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max)
        };
        // train_local takes this path: the same parameters (the delta is taken in f32).
        assert!(diff(&via_local, &direct) < 1e-6);
        let model = Model::new(kind, &init, &Device::Cpu).unwrap();
        let mut seen = Vec::new();
        let mut on_step = |s: usize, t: usize| seen.push((s, t, model.flat().unwrap()));
        crate::train::train_model(&model, &data, &c, &mut Rng::seed(1), Some(&mut on_step))
            .unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!((seen[2].0, seen[2].1), (3, 3));
        assert_ne!(seen[0].2, init);
        assert_eq!(seen[2].2, direct, "the last callback saw the final model");
        assert_eq!(model.flat().unwrap(), direct);
    }

    #[test]
    fn only_conv_stages_then_dense_layers_are_taken() {
        assert!(supports(&ModelSpec::cnn()));
        assert!(!supports(&ModelSpec::mlp()));
        assert!(!supports(&ModelSpec::digits_mlp()));
        let layers = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let img = InputShape::Image {
            channels: 1,
            height: 8,
            width: 8,
        };
        // Two pools in a row: not a stage.
        let two = ModelSpec::declare(
            "cnn",
            &layers(&["conv3x3:2", "maxpool2", "maxpool2"]),
            img,
            3,
        )
        .unwrap();
        assert!(!supports(&two));
        let data = noise(4, 64, 3, 1);
        let c = cfg(Work::Steps(1), 2, Optimizer::Adam { lr: 1e-3 }, 0.0);
        let mut p = two.init(1);
        assert!(train(&two, &mut p, &data, &c, &mut Rng::seed(1), None).is_err());
        // DP-SGD stays on autograd.
        let kind = &declared()[1];
        let dp = TrainConfig {
            dp_sgd: Some(crate::dpsgd::DpSgdConfig {
                clip: 1.0,
                noise: 1.0,
                rate: 0.5,
            }),
            ..c
        };
        let mut p = kind.init(1);
        let data = noise(4, kind.input_features(), kind.classes(), 1);
        assert!(train(kind, &mut p, &data, &dp, &mut Rng::seed(1), None).is_err());
        assert_eq!(p, kind.init(1));
    }
}
