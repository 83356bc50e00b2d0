//! The character transformer's training step ([`crate::transformer`]) without autograd, as
//! [`crate::fast_cnn`] is for the CNNs: a hand-written forward pass, next-token cross-entropy and
//! backward pass over one flat parameter vector in canonical order, into one flat gradient in the
//! same order, with every activation in buffers reused from step to step; and AdamW on the flat
//! vectors with the arithmetic of candle's `AdamW` (so a step from the same gradient gives the
//! same bits).
//!
//! What it computes is [`crate::transformer::Transformer::loss`]: token plus position embedding;
//! per block a layer norm (biased variance, eps 1e-5), the `qkv` projection, causal multi-head
//! attention (scores scaled by `1 / sqrt(head width)`, softmax over the positions up to and
//! including the query's: candle's -1e9 mask makes the others exactly 0), the output projection
//! and the residual; a layer norm, the 4x MLP with GELU's tanh approximation
//! ([`crate::gelu`]) and the residual; the final layer norm and the head (no weight tying). Every
//! matrix product is one [`Gemm`] call ([`crate::kernels`]): the linear layers on all
//! `batch x context` rows at once, attention per (window, head) on strided views of the `qkv`
//! rows, without copying the heads apart. The elementwise loops (GELU, layer norms, AdamW) run as
//! AVX-512 versions where the CPU has them. The tests below hold the loss and every parameter's
//! gradient to candle's autograd, AdamW to candle's bit for bit, and training rounds to the
//! candle path ([`crate::lm_local`]).
//!
//! Speed (`scripts/speed-vs-torch.sh`, one thread, AMD EPYC, default shape, batch 12, two runs):
//! 13,700-14,000 tokens/s against PyTorch's 11,900-12,400 (1.14-1.16x) and candle autograd's
//! 5,000-5,200. `perf record` puts three
//! quarters of the step in the matrix-product kernel, the rest in packing transposed operands
//! (4%), the layer norms (4%), GELU (3%), and AdamW (1%).

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::kernels::{Gemm, Mat, internal};
use crate::transformer::TransformerConfig;

/// The layer norms' epsilon (the transformer's).
const EPS: f32 = 1e-5;

/// Offsets of one block's parameters in the flat vector (each bias sits just before its weight:
/// names are sorted).
#[derive(Debug, Clone, Copy)]
struct BlockAt {
    ln1_w: usize,
    ln1_b: usize,
    qkv_w: usize,
    qkv_b: usize,
    proj_w: usize,
    proj_b: usize,
    ln2_w: usize,
    ln2_b: usize,
    fc_w: usize,
    fc_b: usize,
    out_w: usize,
    out_b: usize,
}

/// Where every parameter sits in the canonical flat vector.
#[derive(Debug, Clone)]
struct Offsets {
    tok: usize,
    pos: usize,
    lnf_w: usize,
    lnf_b: usize,
    head_w: usize,
    head_b: usize,
    blocks: Vec<BlockAt>,
    total: usize,
}

impl Offsets {
    fn new(cfg: &TransformerConfig, vocab: usize) -> Result<Self> {
        let mut at = HashMap::new();
        let mut off = 0;
        for s in cfg.layout(vocab) {
            let n = s.numel();
            at.insert(s.name, off);
            off += n;
        }
        let get = |name: &str| {
            at.get(name)
                .copied()
                .ok_or_else(|| internal(format!("no parameter {name}")))
        };
        let blocks = (0..cfg.layers)
            .map(|i| {
                let p = |s: &str| get(&format!("blocks.{i}.{s}"));
                Ok(BlockAt {
                    ln1_w: p("ln1.weight")?,
                    ln1_b: p("ln1.bias")?,
                    qkv_w: p("attn.qkv.weight")?,
                    qkv_b: p("attn.qkv.bias")?,
                    proj_w: p("attn.proj.weight")?,
                    proj_b: p("attn.proj.bias")?,
                    ln2_w: p("ln2.weight")?,
                    ln2_b: p("ln2.bias")?,
                    fc_w: p("mlp.fc.weight")?,
                    fc_b: p("mlp.fc.bias")?,
                    out_w: p("mlp.proj.weight")?,
                    out_b: p("mlp.proj.bias")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Offsets {
            tok: get("tok_emb.weight")?,
            pos: get("pos_emb.weight")?,
            lnf_w: get("ln_f.weight")?,
            lnf_b: get("ln_f.bias")?,
            head_w: get("head.weight")?,
            head_b: get("head.bias")?,
            blocks,
            total: off,
        })
    }
}

/// The transformer's training step for one shape and batch size, with its activation buffers.
pub(crate) struct FastLm {
    cfg: TransformerConfig,
    vocab: usize,
    at: Offsets,
    gemm: Gemm,
    /// Windows per step the buffers are sized for.
    batch: usize,
    /// The residual stream entering each block, then the final one: `(layers + 1) x N x C`
    /// (`N = batch x context` rows).
    resid: Vec<f32>,
    /// The stream after each block's attention residual: `layers x N x C`.
    mid: Vec<f32>,
    /// Outputs of each block's two layer norms, `layers x N x C` each.
    ln1: Vec<f32>,
    ln2: Vec<f32>,
    /// Mean and `1 / sqrt(var + eps)` of every row of each layer norm: `layers x N x 2` each.
    stats1: Vec<f32>,
    stats2: Vec<f32>,
    /// `qkv` projections, `layers x N x 3C` (column `s C + h d + i`: part s, head h).
    qkv: Vec<f32>,
    /// Attention probabilities, `layers x batch x heads x T x T` (0 above the diagonal).
    att: Vec<f32>,
    /// Attention outputs (heads side by side) before the projection, `layers x N x C`.
    y: Vec<f32>,
    /// The MLP's hidden layer before and after GELU, `layers x N x 4C` each.
    hpre: Vec<f32>,
    hact: Vec<f32>,
    /// The final layer norm's output and row statistics.
    lnf: Vec<f32>,
    statsf: Vec<f32>,
    /// Logits, `N x vocab`; the loss turns them into their gradient in place.
    logits: Vec<f32>,
    /// Backward scratch: the residual stream's gradient, a layer norm's output gradient, the
    /// attention outputs', the `qkv` projections', the MLP hidden layer's, one head's scores'.
    dx: Vec<f32>,
    dln: Vec<f32>,
    dy: Vec<f32>,
    dqkv: Vec<f32>,
    dh: Vec<f32>,
    dp: Vec<f32>,
}

impl FastLm {
    /// A step for `cfg` with `vocab` characters; buffers for `batch` windows of `cfg.context`.
    pub fn new(cfg: TransformerConfig, vocab: usize, batch: usize) -> Result<Self> {
        cfg.validate()?;
        let mut s = FastLm {
            cfg,
            vocab,
            at: Offsets::new(&cfg, vocab)?,
            gemm: Gemm::new(),
            batch: 0,
            resid: Vec::new(),
            mid: Vec::new(),
            ln1: Vec::new(),
            ln2: Vec::new(),
            stats1: Vec::new(),
            stats2: Vec::new(),
            qkv: Vec::new(),
            att: Vec::new(),
            y: Vec::new(),
            hpre: Vec::new(),
            hact: Vec::new(),
            lnf: Vec::new(),
            statsf: Vec::new(),
            logits: Vec::new(),
            dx: Vec::new(),
            dln: Vec::new(),
            dy: Vec::new(),
            dqkv: Vec::new(),
            dh: Vec::new(),
            dp: Vec::new(),
        };
        s.size_for(batch);
        Ok(s)
    }

    /// The same step with the matrix product `gemm` (tests: both kernels).
    #[cfg(test)]
    fn with_gemm(mut self, gemm: Gemm) -> Self {
        self.gemm = gemm;
        self
    }

    /// Number of parameters.
    #[cfg(test)]
    pub fn num_params(&self) -> usize {
        self.at.total
    }

    /// Sizes every buffer for `batch` windows (a no-op when it already is).
    fn size_for(&mut self, batch: usize) {
        if batch == self.batch {
            return;
        }
        let (l, t, c, h) = (
            self.cfg.layers,
            self.cfg.context,
            self.cfg.dim,
            self.cfg.heads,
        );
        let n = batch * t;
        let size = |v: &mut Vec<f32>, len: usize| {
            v.clear();
            v.resize(len, 0.0);
        };
        size(&mut self.resid, (l + 1) * n * c);
        size(&mut self.mid, l * n * c);
        size(&mut self.ln1, l * n * c);
        size(&mut self.ln2, l * n * c);
        size(&mut self.stats1, l * n * 2);
        size(&mut self.stats2, l * n * 2);
        size(&mut self.qkv, l * n * 3 * c);
        size(&mut self.att, l * batch * h * t * t);
        size(&mut self.y, l * n * c);
        size(&mut self.hpre, l * n * 4 * c);
        size(&mut self.hact, l * n * 4 * c);
        size(&mut self.lnf, n * c);
        size(&mut self.statsf, n * 2);
        size(&mut self.logits, n * self.vocab);
        size(&mut self.dx, n * c);
        size(&mut self.dln, n * c);
        size(&mut self.dy, n * c);
        size(&mut self.dqkv, n * 3 * c);
        size(&mut self.dh, n * 4 * c);
        size(&mut self.dp, t * t);
        self.batch = batch;
    }

    /// The mean next-token cross-entropy of `batch` windows `xs` (`batch x context` token ids,
    /// row-major) against targets `ys`, and its gradient with respect to `params` (canonical
    /// order) written into `grad`.
    pub fn loss_and_grad(
        &mut self,
        params: &[f32],
        xs: &[u32],
        ys: &[u32],
        grad: &mut [f32],
    ) -> Result<f32> {
        let t = self.cfg.context;
        if params.len() != self.at.total || grad.len() != self.at.total {
            return Err(Error::WrongLength {
                got: params.len().min(grad.len()),
                expected: self.at.total,
            });
        }
        if xs.is_empty() || !xs.len().is_multiple_of(t) || ys.len() != xs.len() {
            return Err(Error::Dataset(format!(
                "{} inputs and {} targets are not whole windows of {t}",
                xs.len(),
                ys.len()
            )));
        }
        if let Some(&bad) = xs.iter().chain(ys).find(|&&v| v as usize >= self.vocab) {
            return Err(Error::IndexOutOfRange {
                index: bad as usize,
                len: self.vocab,
            });
        }
        self.size_for(xs.len() / t);
        self.forward(params, xs)?;
        let loss = cross_entropy(&mut self.logits, ys, self.vocab);
        self.backward(params, xs, grad)?;
        Ok(loss)
    }

    /// Embedding, blocks, final norm and head, into `self.logits`.
    fn forward(&mut self, params: &[f32], xs: &[u32]) -> Result<()> {
        let (t, c, heads) = (self.cfg.context, self.cfg.dim, self.cfg.heads);
        let (n, v) = (self.batch * t, self.vocab);
        let nc = n * c;
        let at = &self.at;
        let g = self.gemm;
        let p = |off: usize, len: usize| &params[off..off + len];
        // Token plus position embedding.
        for (r, (row, &x)) in self.resid[..nc].chunks_exact_mut(c).zip(xs).enumerate() {
            let tok = p(at.tok + x as usize * c, c);
            let pos = p(at.pos + (r % t) * c, c);
            for ((d, a), b) in row.iter_mut().zip(tok).zip(pos) {
                *d = a + b;
            }
        }
        let scale = (1.0 / ((c / heads) as f64).sqrt()) as f32;
        for (l, b) in at.blocks.iter().enumerate() {
            let (done, next) = self.resid.split_at_mut((l + 1) * nc);
            let x = &done[l * nc..];
            let ln1 = &mut self.ln1[l * nc..(l + 1) * nc];
            let st1 = &mut self.stats1[l * n * 2..(l + 1) * n * 2];
            layer_norm(x, p(b.ln1_w, c), p(b.ln1_b, c), ln1, st1, c);
            let qkv = &mut self.qkv[l * 3 * nc..(l + 1) * 3 * nc];
            linear(
                &g,
                ln1,
                n,
                c,
                p(b.qkv_w, 3 * c * c),
                p(b.qkv_b, 3 * c),
                3 * c,
                qkv,
            )?;
            let att = &mut self.att[l * self.batch * heads * t * t..];
            let y = &mut self.y[l * nc..(l + 1) * nc];
            attention(&g, qkv, att, y, self.batch, t, c, heads, scale)?;
            let mid = &mut self.mid[l * nc..(l + 1) * nc];
            linear(&g, y, n, c, p(b.proj_w, c * c), p(b.proj_b, c), c, mid)?;
            add(mid, x);
            let ln2 = &mut self.ln2[l * nc..(l + 1) * nc];
            let st2 = &mut self.stats2[l * n * 2..(l + 1) * n * 2];
            layer_norm(mid, p(b.ln2_w, c), p(b.ln2_b, c), ln2, st2, c);
            let hpre = &mut self.hpre[l * 4 * nc..(l + 1) * 4 * nc];
            linear(
                &g,
                ln2,
                n,
                c,
                p(b.fc_w, 4 * c * c),
                p(b.fc_b, 4 * c),
                4 * c,
                hpre,
            )?;
            let hact = &mut self.hact[l * 4 * nc..(l + 1) * 4 * nc];
            crate::gelu::values(hpre, hact);
            let out = &mut next[..nc];
            linear(
                &g,
                hact,
                n,
                4 * c,
                p(b.out_w, 4 * c * c),
                p(b.out_b, c),
                c,
                out,
            )?;
            add(out, mid);
        }
        let last = &self.resid[self.cfg.layers * nc..];
        let (w, bias) = (p(at.lnf_w, c), p(at.lnf_b, c));
        layer_norm(last, w, bias, &mut self.lnf, &mut self.statsf, c);
        linear(
            &g,
            &self.lnf,
            n,
            c,
            p(at.head_w, v * c),
            p(at.head_b, v),
            v,
            &mut self.logits,
        )
    }

    /// The gradient of the loss whose logit gradient `self.logits` holds, into `grad`.
    fn backward(&mut self, params: &[f32], xs: &[u32], grad: &mut [f32]) -> Result<()> {
        let (t, c, heads) = (self.cfg.context, self.cfg.dim, self.cfg.heads);
        let (n, v) = (self.batch * t, self.vocab);
        let nc = n * c;
        let at = &self.at;
        let g = self.gemm;
        grad.fill(0.0);
        let head = Lin {
            w: at.head_w,
            b: at.head_b,
            inp: c,
            out: v,
        };
        head.backward(
            &g,
            params,
            grad,
            &self.logits,
            &self.lnf,
            n,
            &mut self.dln,
            false,
        )?;
        self.dx.fill(0.0);
        let last = &self.resid[self.cfg.layers * nc..];
        let norm = Norm {
            w: at.lnf_w,
            b: at.lnf_b,
        };
        norm.backward(params, grad, last, &self.statsf, &self.dln, &mut self.dx, c)?;
        let scale = (1.0 / ((c / heads) as f64).sqrt()) as f32;
        for (l, b) in at.blocks.iter().enumerate().rev() {
            // The MLP: resid[l + 1] = mid + out(gelu(fc(ln2(mid)))).
            let hact = &self.hact[l * 4 * nc..(l + 1) * 4 * nc];
            let out = Lin {
                w: b.out_w,
                b: b.out_b,
                inp: 4 * c,
                out: c,
            };
            out.backward(&g, params, grad, &self.dx, hact, n, &mut self.dh, false)?;
            let hpre = &self.hpre[l * 4 * nc..(l + 1) * 4 * nc];
            crate::gelu::times_slopes(hpre, &mut self.dh);
            let fc = Lin {
                w: b.fc_w,
                b: b.fc_b,
                inp: c,
                out: 4 * c,
            };
            let ln2 = &self.ln2[l * nc..(l + 1) * nc];
            fc.backward(&g, params, grad, &self.dh, ln2, n, &mut self.dln, false)?;
            let norm = Norm {
                w: b.ln2_w,
                b: b.ln2_b,
            };
            let mid = &self.mid[l * nc..(l + 1) * nc];
            let st2 = &self.stats2[l * n * 2..(l + 1) * n * 2];
            norm.backward(params, grad, mid, st2, &self.dln, &mut self.dx, c)?;
            // Attention: mid = x + proj(attn(qkv(ln1(x)))).
            let proj = Lin {
                w: b.proj_w,
                b: b.proj_b,
                inp: c,
                out: c,
            };
            let y = &self.y[l * nc..(l + 1) * nc];
            proj.backward(&g, params, grad, &self.dx, y, n, &mut self.dy, false)?;
            let qkv = &self.qkv[l * 3 * nc..(l + 1) * 3 * nc];
            let att = &self.att[l * self.batch * heads * t * t..];
            attention_backward(
                &g,
                qkv,
                att,
                &self.dy,
                &mut self.dqkv,
                &mut self.dp,
                self.batch,
                t,
                c,
                heads,
                scale,
            )?;
            let qkv_lin = Lin {
                w: b.qkv_w,
                b: b.qkv_b,
                inp: c,
                out: 3 * c,
            };
            let ln1 = &self.ln1[l * nc..(l + 1) * nc];
            qkv_lin.backward(&g, params, grad, &self.dqkv, ln1, n, &mut self.dln, false)?;
            let norm = Norm {
                w: b.ln1_w,
                b: b.ln1_b,
            };
            let x = &self.resid[l * nc..(l + 1) * nc];
            let st1 = &self.stats1[l * n * 2..(l + 1) * n * 2];
            norm.backward(params, grad, x, st1, &self.dln, &mut self.dx, c)?;
        }
        // Embeddings: each row's gradient goes to its token's row and its position's row.
        for (r, (row, &x)) in self.dx.chunks_exact(c).zip(xs).enumerate() {
            let tok = at.tok + x as usize * c;
            add(&mut grad[tok..tok + c], row);
            let pos = at.pos + (r % t) * c;
            add(&mut grad[pos..pos + c], row);
        }
        Ok(())
    }
}

/// `dst += src`, element by element.
fn add(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// `out = inp W^T + b` for `n` rows: `inp` is `n x din`, `W` is `[dout, din]`, `out` `n x dout`.
#[allow(clippy::too_many_arguments)]
fn linear(
    g: &Gemm,
    inp: &[f32],
    n: usize,
    din: usize,
    w: &[f32],
    b: &[f32],
    dout: usize,
    out: &mut [f32],
) -> Result<()> {
    for row in out[..n * dout].chunks_exact_mut(dout) {
        row.copy_from_slice(b);
    }
    g.run(
        out,
        Mat::rows(n, dout),
        true,
        inp,
        Mat::rows(n, din),
        w,
        Mat::rows(dout, din).t(),
    )
}

/// A linear layer's parameters: weight `[out, inp]` at `w`, bias at `b`.
struct Lin {
    w: usize,
    b: usize,
    inp: usize,
    out: usize,
}

impl Lin {
    /// From the output gradient `dout` (`n x out`) and the layer's input `inp` (`n x inp`): adds
    /// the weight and bias gradients onto `grad`, and writes (or adds, with `accumulate`) the
    /// input gradient `dout W` into `dinp`.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        g: &Gemm,
        params: &[f32],
        grad: &mut [f32],
        dout: &[f32],
        inp: &[f32],
        n: usize,
        dinp: &mut [f32],
        accumulate: bool,
    ) -> Result<()> {
        let (i, o) = (self.inp, self.out);
        g.run(
            &mut grad[self.w..self.w + o * i],
            Mat::rows(o, i),
            true,
            dout,
            Mat::rows(n, o).t(),
            inp,
            Mat::rows(n, i),
        )?;
        let db = &mut grad[self.b..self.b + o];
        for row in dout[..n * o].chunks_exact(o) {
            add(db, row);
        }
        g.run(
            dinp,
            Mat::rows(n, i),
            accumulate,
            dout,
            Mat::rows(n, o),
            &params[self.w..self.w + o * i],
            Mat::rows(o, i),
        )
    }
}

/// Whether the elementwise loops below may take their AVX-512 versions.
#[cfg(target_arch = "x86_64")]
fn wide() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// Layer norm of each `c`-wide row of `x` into `out`, with each row's mean and
/// `1 / sqrt(var + eps)` into `stats`.
fn layer_norm(x: &[f32], w: &[f32], b: &[f32], out: &mut [f32], stats: &mut [f32], c: usize) {
    #[inline(always)]
    fn run(x: &[f32], w: &[f32], b: &[f32], out: &mut [f32], stats: &mut [f32], c: usize) {
        let rows = x.chunks_exact(c).zip(out.chunks_exact_mut(c));
        for ((row, o), st) in rows.zip(stats.chunks_exact_mut(2)) {
            let mean = row.iter().sum::<f32>() / c as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / c as f32;
            let rstd = 1.0 / (var + EPS).sqrt();
            for (((o, v), w), b) in o.iter_mut().zip(row).zip(w).zip(b) {
                *o = (v - mean) * rstd * w + b;
            }
            st[0] = mean;
            st[1] = rstd;
        }
    }
    #[cfg(target_arch = "x86_64")]
    if wide() {
        #[target_feature(enable = "avx512f")]
        fn run_wide(x: &[f32], w: &[f32], b: &[f32], out: &mut [f32], st: &mut [f32], c: usize) {
            run(x, w, b, out, st, c)
        }
        // SAFETY: the CPU has AVX-512F (checked just above).
        return unsafe { run_wide(x, w, b, out, stats, c) };
    }
    run(x, w, b, out, stats, c)
}

/// A layer norm's gain at `w` and bias at `b`.
struct Norm {
    w: usize,
    b: usize,
}

impl Norm {
    /// From the output gradient `dout`: adds the input gradient onto `dx` and the gain and bias
    /// gradients onto `grad`. With `xh = (x - mean) rstd` and `g = dout w`:
    /// `dx = rstd (g - mean(g) - xh mean(g xh))`.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        params: &[f32],
        grad: &mut [f32],
        x: &[f32],
        stats: &[f32],
        dout: &[f32],
        dx: &mut [f32],
        c: usize,
    ) -> Result<()> {
        let w = &params[self.w..self.w + c];
        let (db, dw) = pair_mut(grad, self.b, self.w, c)?;
        norm_backward(w, db, dw, x, stats, dout, dx, c);
        Ok(())
    }
}

/// [`Norm::backward`]'s loops.
#[allow(clippy::too_many_arguments)]
fn norm_backward(
    w: &[f32],
    db: &mut [f32],
    dw: &mut [f32],
    x: &[f32],
    stats: &[f32],
    dout: &[f32],
    dx: &mut [f32],
    c: usize,
) {
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn run(
        w: &[f32],
        db: &mut [f32],
        dw: &mut [f32],
        x: &[f32],
        stats: &[f32],
        dout: &[f32],
        dx: &mut [f32],
        c: usize,
    ) {
        let rows = x.chunks_exact(c).zip(dout.chunks_exact(c));
        for (((row, d), dxr), st) in rows.zip(dx.chunks_exact_mut(c)).zip(stats.chunks_exact(2)) {
            let (mean, rstd) = (st[0], st[1]);
            let (mut mg, mut mgx) = (0.0f32, 0.0f32);
            for ((&x, &d), &w) in row.iter().zip(d).zip(w) {
                let xh = (x - mean) * rstd;
                let gi = d * w;
                mg += gi;
                mgx += gi * xh;
            }
            for (((dw, db), &x), &d) in dw.iter_mut().zip(db.iter_mut()).zip(row).zip(d) {
                *dw += d * ((x - mean) * rstd);
                *db += d;
            }
            let (mg, mgx) = (mg / c as f32, mgx / c as f32);
            for (((o, &x), &d), &w) in dxr.iter_mut().zip(row).zip(d).zip(w) {
                let xh = (x - mean) * rstd;
                *o += rstd * (d * w - mg - xh * mgx);
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    if wide() {
        #[target_feature(enable = "avx512f")]
        #[allow(clippy::too_many_arguments)]
        fn run_wide(
            w: &[f32],
            db: &mut [f32],
            dw: &mut [f32],
            x: &[f32],
            stats: &[f32],
            dout: &[f32],
            dx: &mut [f32],
            c: usize,
        ) {
            run(w, db, dw, x, stats, dout, dx, c)
        }
        // SAFETY: the CPU has AVX-512F (checked just above).
        return unsafe { run_wide(w, db, dw, x, stats, dout, dx, c) };
    }
    run(w, db, dw, x, stats, dout, dx, c)
}

/// Two disjoint `len`-long mutable windows of `v`, at `a` and at `b`.
fn pair_mut(v: &mut [f32], a: usize, b: usize, len: usize) -> Result<(&mut [f32], &mut [f32])> {
    if a + len <= b && b + len <= v.len() {
        let (lo, hi) = v.split_at_mut(b);
        Ok((&mut lo[a..a + len], &mut hi[..len]))
    } else if b + len <= a && a + len <= v.len() {
        let (lo, hi) = v.split_at_mut(a);
        Ok((&mut hi[..len], &mut lo[b..b + len]))
    } else {
        Err(internal(format!("windows at {a} and {b} of {len} overlap")))
    }
}

/// One head's `T x (C / heads)` view of a `qkv` or attention-output buffer whose rows are
/// `stride` wide.
fn head_view(t: usize, hd: usize, stride: usize) -> Mat {
    Mat {
        rows: t,
        cols: hd,
        rs: stride,
        cs: 1,
    }
}

/// Causal attention for every window and head: `P = softmax(scale Q K^T)` over the positions up
/// to the query's (0 beyond) into `att`, and `Y = P V` into `y`, heads side by side.
#[allow(clippy::too_many_arguments)]
fn attention(
    g: &Gemm,
    qkv: &[f32],
    att: &mut [f32],
    y: &mut [f32],
    batch: usize,
    t: usize,
    c: usize,
    heads: usize,
    scale: f32,
) -> Result<()> {
    let hd = c / heads;
    let qm = head_view(t, hd, 3 * c);
    let ym = head_view(t, hd, c);
    let sq = Mat::rows(t, t);
    for bi in 0..batch {
        for h in 0..heads {
            let base = bi * t * 3 * c + h * hd;
            let s = &mut att[(bi * heads + h) * t * t..(bi * heads + h + 1) * t * t];
            g.run(s, sq, false, &qkv[base..], qm, &qkv[base + c..], qm.t())?;
            for (i, row) in s.chunks_exact_mut(t).enumerate() {
                let (live, future) = row.split_at_mut(i + 1);
                let mut max = f32::NEG_INFINITY;
                for v in live.iter_mut() {
                    *v *= scale;
                    max = max.max(*v);
                }
                let mut sum = 0.0f32;
                for v in live.iter_mut() {
                    *v = (*v - max).exp();
                    sum += *v;
                }
                let inv = 1.0 / sum;
                live.iter_mut().for_each(|v| *v *= inv);
                future.fill(0.0);
            }
            let yo = bi * t * c + h * hd;
            g.run(&mut y[yo..], ym, false, s, sq, &qkv[base + 2 * c..], qm)?;
        }
    }
    Ok(())
}

/// The backward pass of [`attention`]: from `dy` (heads side by side) to the `qkv` gradient
/// `dqkv`; `dp` is one head's `T x T` scratch.
#[allow(clippy::too_many_arguments)]
fn attention_backward(
    g: &Gemm,
    qkv: &[f32],
    att: &[f32],
    dy: &[f32],
    dqkv: &mut [f32],
    dp: &mut [f32],
    batch: usize,
    t: usize,
    c: usize,
    heads: usize,
    scale: f32,
) -> Result<()> {
    let hd = c / heads;
    let qm = head_view(t, hd, 3 * c);
    let ym = head_view(t, hd, c);
    let sq = Mat::rows(t, t);
    for bi in 0..batch {
        for h in 0..heads {
            let base = bi * t * 3 * c + h * hd;
            let yo = bi * t * c + h * hd;
            let p = &att[(bi * heads + h) * t * t..(bi * heads + h + 1) * t * t];
            // dP = dY V^T, dV = P^T dY.
            g.run(dp, sq, false, &dy[yo..], ym, &qkv[base + 2 * c..], qm.t())?;
            g.run(
                &mut dqkv[base + 2 * c..],
                qm,
                false,
                p,
                sq.t(),
                &dy[yo..],
                ym,
            )?;
            // Through the softmax and the scaling: dS = scale P (dP - rowsum(dP P)).
            for (i, (dr, pr)) in dp.chunks_exact_mut(t).zip(p.chunks_exact(t)).enumerate() {
                let (live, future) = dr.split_at_mut(i + 1);
                let dot: f32 = live.iter().zip(pr).map(|(d, p)| d * p).sum();
                for (d, p) in live.iter_mut().zip(pr) {
                    *d = p * (*d - dot) * scale;
                }
                future.fill(0.0);
            }
            // dQ = dS K, dK = dS^T Q.
            g.run(&mut dqkv[base..], qm, false, dp, sq, &qkv[base + c..], qm)?;
            g.run(
                &mut dqkv[base + c..],
                qm,
                false,
                dp,
                sq.t(),
                &qkv[base..],
                qm,
            )?;
        }
    }
    Ok(())
}

/// Mean cross-entropy of the `vocab`-wide rows of `logits` against `ys` (candle's
/// `log_softmax` then the mean negative log-likelihood); `logits` becomes the loss's gradient,
/// `(softmax - onehot) / rows`.
fn cross_entropy(logits: &mut [f32], ys: &[u32], vocab: usize) -> f32 {
    let rows = ys.len();
    let inv_rows = 1.0 / rows as f32;
    let mut total = 0.0f64;
    for (row, &y) in logits.chunks_exact_mut(vocab).zip(ys) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let target = row[y as usize] - max;
        let mut sum = 0.0f32;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        total += f64::from(sum.ln() - target);
        let k = inv_rows / sum;
        row.iter_mut().for_each(|v| *v *= k);
        row[y as usize] -= inv_rows;
    }
    (total / rows as f64) as f32
}

/// AdamW over the flat parameters as [`crate::lm::LmOptimizer`] sets candle's up: betas
/// (0.9, 0.99), eps 1e-8, weight decay on the rank-2 tensors (matrices and embeddings) only, and
/// candle's `AdamW::step` arithmetic in the same order in `f32` (bias corrections and the decay
/// factor computed in `f64`, then rounded), so the same gradient gives the same parameters.
pub(crate) struct FlatAdamW {
    m: Vec<f32>,
    v: Vec<f32>,
    steps: u64,
    weight_decay: f64,
    /// `(start, len, decayed)` of every tensor.
    tensors: Vec<(usize, usize, bool)>,
}

impl FlatAdamW {
    /// Zero moments for the transformer `cfg` over `vocab` characters.
    pub fn new(cfg: &TransformerConfig, vocab: usize, weight_decay: f64) -> Self {
        let mut tensors = Vec::new();
        let mut off = 0;
        for s in cfg.layout(vocab) {
            let n = s.numel();
            tensors.push((off, n, s.shape.len() == 2));
            off += n;
        }
        FlatAdamW {
            m: vec![0.0; off],
            v: vec![0.0; off],
            steps: 0,
            weight_decay,
            tensors,
        }
    }

    /// One step at learning rate `lr` from `grad`.
    pub fn step(&mut self, params: &mut [f32], grad: &[f32], lr: f64) -> Result<()> {
        if params.len() != self.m.len() || grad.len() != self.m.len() {
            return Err(Error::WrongLength {
                got: params.len().min(grad.len()),
                expected: self.m.len(),
            });
        }
        self.steps += 1;
        let (beta1, beta2) = (0.9f64, 0.99f64);
        let t = i32::try_from(self.steps).unwrap_or(i32::MAX);
        let scale_m = (1.0 / (1.0 - beta1.powi(t))) as f32;
        let scale_v = (1.0 / (1.0 - beta2.powi(t))) as f32;
        let (b1, b2) = (beta1 as f32, beta2 as f32);
        let (c1, c2) = ((1.0 - beta1) as f32, (1.0 - beta2) as f32);
        let eps = 1e-8f64 as f32;
        let lr32 = lr as f32;
        for &(start, len, decayed) in &self.tensors {
            let lambda = if decayed { self.weight_decay } else { 0.0 };
            let keep = (1.0 - lr * lambda) as f32;
            let range = start..start + len;
            let k = AdamConsts {
                b1,
                b2,
                c1,
                c2,
                scale_m,
                scale_v,
                keep,
                eps,
                lr: lr32,
            };
            adam_update(
                &mut params[range.clone()],
                &grad[range.clone()],
                &mut self.m[range.clone()],
                &mut self.v[range],
                &k,
            );
        }
        Ok(())
    }
}

/// One AdamW step's constants, each rounded to `f32` as candle's `affine` does.
struct AdamConsts {
    b1: f32,
    b2: f32,
    c1: f32,
    c2: f32,
    scale_m: f32,
    scale_v: f32,
    keep: f32,
    eps: f32,
    lr: f32,
}

/// candle's `AdamW::step` on one tensor, in its order of `f32` operations (no fused
/// multiply-adds, so the vector version gives the same bits).
fn adam_update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &AdamConsts) {
    #[inline(always)]
    fn run(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &AdamConsts) {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
            *m = *m * k.b1 + g * k.c1;
            *v = *v * k.b2 + g * g * k.c2;
            let m_hat = *m * k.scale_m;
            let v_hat = *v * k.scale_v;
            *p = *p * k.keep - m_hat / (v_hat.sqrt() + k.eps) * k.lr;
        }
    }
    #[cfg(target_arch = "x86_64")]
    if wide() {
        #[target_feature(enable = "avx512f")]
        fn run_wide(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &AdamConsts) {
            run(p, g, m, v, k)
        }
        // SAFETY: the CPU has AVX-512F (checked just above).
        return unsafe { run_wide(p, g, m, v, k) };
    }
    run(p, g, m, v, k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::transformer::Transformer;
    use candle_core::{Device, Tensor};

    fn windows(vocab: usize, batch: usize, t: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
        let mut rng = Rng::seed(seed);
        let data: Vec<u32> = (0..batch * t + 1)
            .map(|_| rng.below(vocab) as u32)
            .collect();
        (data[..batch * t].to_vec(), data[1..].to_vec())
    }

    /// Candle's loss and gradient (canonical order) of the same windows.
    fn autograd(
        cfg: TransformerConfig,
        vocab: usize,
        params: &[f32],
        xs: &[u32],
        ys: &[u32],
    ) -> (f32, Vec<f32>) {
        let dev = Device::Cpu;
        let m = Transformer::new(cfg, vocab, params, &dev).unwrap();
        let b = xs.len() / cfg.context;
        let xt = Tensor::from_slice(xs, (b, cfg.context), &dev).unwrap();
        let yt = Tensor::from_slice(ys, (b, cfg.context), &dev).unwrap();
        let (loss, _) = m.loss(&xt, &yt).unwrap();
        let grads = loss.backward().unwrap();
        let mut flat = Vec::new();
        for v in m.vars() {
            let g = grads.get(v.as_tensor()).unwrap();
            flat.extend(g.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        (loss.to_scalar::<f32>().unwrap(), flat)
    }

    /// Loss and every tensor's gradient against candle's: each element within 1e-4 of the
    /// largest gradient of its tensor (plus 1e-7 absolute for tensors whose gradient is ~0).
    fn check(cfg: TransformerConfig, vocab: usize, batch: usize, seed: u64) {
        // The `gemm` crate (several threads), and one thread with the AVX-512 product where the
        // CPU has it.
        for gemm in [Gemm::crate_only(), Gemm::single_threaded()] {
            check_with(cfg, vocab, batch, seed, gemm);
        }
    }

    fn check_with(cfg: TransformerConfig, vocab: usize, batch: usize, seed: u64, gemm: Gemm) {
        // Non-trivial layer-norm gains and biases, so their gradients are exercised.
        let mut params = cfg.init(vocab, seed);
        let mut rng = Rng::seed(seed + 100);
        for (spec, range) in spans(&cfg, vocab) {
            if spec.ends_with(".bias") || spec.contains("ln") {
                for p in &mut params[range] {
                    *p += (rng.next_f64() as f32 - 0.5) * 0.2;
                }
            }
        }
        let (xs, ys) = windows(vocab, batch, cfg.context, seed);
        let (want_loss, want) = autograd(cfg, vocab, &params, &xs, &ys);
        let mut net = FastLm::new(cfg, vocab, batch).unwrap().with_gemm(gemm);
        let mut grad = vec![f32::NAN; net.num_params()];
        let loss = net.loss_and_grad(&params, &xs, &ys, &mut grad).unwrap();
        assert!(
            (loss - want_loss).abs() <= 1e-5 * want_loss.abs(),
            "{loss} vs {want_loss}"
        );
        for (name, range) in spans(&cfg, vocab) {
            let (a, b) = (&grad[range.clone()], &want[range]);
            let top = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert!(
                    (x - y).abs() <= 1e-4 * top + 1e-7,
                    "{name}[{i}]: {x} vs {y} (largest {top})"
                );
            }
        }
        // A second step on other windows reuses the buffers and still agrees.
        let (xs, ys) = windows(vocab, batch, cfg.context, seed + 1);
        let (want_loss, _) = autograd(cfg, vocab, &params, &xs, &ys);
        let loss = net.loss_and_grad(&params, &xs, &ys, &mut grad).unwrap();
        assert!((loss - want_loss).abs() <= 1e-5 * want_loss.abs());
    }

    fn spans(cfg: &TransformerConfig, vocab: usize) -> Vec<(String, std::ops::Range<usize>)> {
        let mut off = 0;
        cfg.layout(vocab)
            .into_iter()
            .map(|s| {
                let r = off..off + s.numel();
                off = r.end;
                (s.name, r)
            })
            .collect()
    }

    #[test]
    fn loss_and_every_gradient_equal_autograds_on_a_small_model() {
        let cfg = TransformerConfig {
            layers: 2,
            heads: 2,
            dim: 16,
            context: 8,
        };
        check(cfg, 7, 3, 1);
        check(cfg, 7, 1, 2);
    }

    #[test]
    fn loss_and_every_gradient_equal_autograds_on_the_default_model() {
        check(TransformerConfig::default(), 74, 3, 5);
    }

    /// From candle's own gradients, three steps of [`FlatAdamW`] give the same bits as three of
    /// candle's two `AdamW`s as [`crate::lm::LmOptimizer`] sets them up (decay on rank-2 tensors).
    #[test]
    fn flat_adamw_steps_are_candles_bit_for_bit() {
        let cfg = TransformerConfig {
            layers: 1,
            heads: 2,
            dim: 8,
            context: 4,
        };
        let vocab = 6;
        let dev = Device::Cpu;
        let mut flat = cfg.init(vocab, 3);
        let m = Transformer::new(cfg, vocab, &flat, &dev).unwrap();
        let mut candle = crate::lm::LmOptimizer::autograd(&m, 0.01, 0.1).unwrap();
        let mut ours = FlatAdamW::new(&cfg, vocab, 0.1);
        for step in 0..3 {
            let (xs, ys) = windows(vocab, 2, cfg.context, step);
            let (_, grad) = autograd(cfg, vocab, &m.flat().unwrap(), &xs, &ys);
            let xt = Tensor::from_slice(&xs, (2, cfg.context), &dev).unwrap();
            let yt = Tensor::from_slice(&ys, (2, cfg.context), &dev).unwrap();
            let grads = m.loss(&xt, &yt).unwrap().0.backward().unwrap();
            let lr = 0.01 / (step + 1) as f64;
            candle.step_autograd(&grads, lr).unwrap();
            ours.step(&mut flat, &grad, lr).unwrap();
            assert_eq!(m.flat().unwrap(), flat, "step {step}");
        }
    }

    #[test]
    fn bad_windows_are_refused() {
        let cfg = TransformerConfig {
            layers: 1,
            heads: 1,
            dim: 4,
            context: 4,
        };
        let params = cfg.init(5, 1);
        let mut net = FastLm::new(cfg, 5, 1).unwrap();
        let mut grad = vec![0.0; params.len()];
        let ok = [0u32, 1, 2, 3];
        assert!(net.loss_and_grad(&params, &ok, &ok, &mut grad).is_ok());
        assert!(
            net.loss_and_grad(&params, &[0, 1, 5, 3], &ok, &mut grad)
                .is_err()
        );
        assert!(
            net.loss_and_grad(&params, &ok, &[0, 9, 1, 1], &mut grad)
                .is_err()
        );
        assert!(
            net.loss_and_grad(&params, &ok[..3], &ok[..3], &mut grad)
                .is_err()
        );
        assert!(
            net.loss_and_grad(&params[1..], &ok, &ok, &mut grad)
                .is_err()
        );
    }
}
