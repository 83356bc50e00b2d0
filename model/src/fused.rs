//! Layer norm and softmax over the last dimension as single CPU passes with their own backward
//! passes, for the character transformer ([`crate::transformer`]), as [`crate::gelu`] is for GELU.
//! candle-nn's differentiable versions (`ops::layer_norm_slow`, `ops::softmax`) are compositions
//! of five to nine tensor operations, each a fresh buffer forward and several more backward; its
//! fused kernels (`LayerNorm`, `softmax_last_dim`) have no backward pass at all. Here each is one
//! custom op forward and one backward, with the same arithmetic as the compositions (biased
//! variance, `eps` inside the square root; softmax shifted by the row maximum). On a non-CPU
//! device, or for a dtype other than `f32`, they fall back to the compositions.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, D, DType, Layout, Shape, Tensor};

/// The size of the last dimension, checked to divide the values.
fn last_dim(l: &Layout, len: usize, op: &str) -> candle_core::Result<usize> {
    match l.dims().last() {
        Some(&c) if c > 0 && len.is_multiple_of(c) => Ok(c),
        _ => candle_core::bail!("{op}: shape {:?} has no usable last dimension", l.dims()),
    }
}

/// Layer norm over the last dimension with gain and bias: `(x - mean) / sqrt(var + eps) * w + b`.
struct LayerNorm {
    eps: f32,
}

/// Mean and `1 / sqrt(var + eps)` of one row.
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = crate::gelu::slice(s1, l1, self.name())?;
        let (w, b) = (
            crate::gelu::slice(s2, l2, self.name())?,
            crate::gelu::slice(s3, l3, self.name())?,
        );
        let c = last_dim(l1, x.len(), self.name())?;
        if w.len() != c || b.len() != c {
            candle_core::bail!("{}: gain/bias of {} for rows of {c}", self.name(), w.len());
        }
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks_exact(c) {
            let (mean, rstd) = moments(row, self.eps);
            out.extend(
                row.iter()
                    .zip(w.iter().zip(b))
                    .map(|(v, (w, b))| (v - mean) * rstd * w + b),
            );
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, grad) = (x.contiguous()?, grad.contiguous()?);
        let all = x.apply_op3_no_bwd(&w.contiguous()?, &grad, &LayerNormGrad { eps: self.eps })?;
        let (n, c) = (x.elem_count(), w.elem_count());
        Ok((
            Some(all.narrow(0, 0, n)?.reshape(x.shape())?),
            Some(all.narrow(0, n, c)?),
            Some(all.narrow(0, n + c, c)?),
        ))
    }
}

/// `(x, w, dy) -> [dx (flat), dw, db]`: with `xh = (x - mean) rstd`, `dxh = dy w`,
/// `dx = rstd (dxh - mean(dxh) - xh mean(dxh xh))`, `dw = sum dy xh`, `db = sum dy` over rows.
struct LayerNormGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "fused-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = crate::gelu::slice(s1, l1, self.name())?;
        let (w, dy) = (
            crate::gelu::slice(s2, l2, self.name())?,
            crate::gelu::slice(s3, l3, self.name())?,
        );
        let c = last_dim(l1, x.len(), self.name())?;
        if w.len() != c || dy.len() != x.len() {
            candle_core::bail!("{}: shapes disagree", self.name());
        }
        let n = x.len();
        let mut out = vec![0.0f32; n + 2 * c];
        let (dx, dwb) = out.split_at_mut(n);
        let (dw, db) = dwb.split_at_mut(c);
        let mut xh = vec![0.0f32; c];
        let mut dxh = vec![0.0f32; c];
        for ((row, g), dxr) in x
            .chunks_exact(c)
            .zip(dy.chunks_exact(c))
            .zip(dx.chunks_exact_mut(c))
        {
            let (mean, rstd) = moments(row, self.eps);
            let (mut m1, mut m2) = (0.0f32, 0.0f32);
            for i in 0..c {
                xh[i] = (row[i] - mean) * rstd;
                dxh[i] = g[i] * w[i];
                dw[i] += g[i] * xh[i];
                db[i] += g[i];
                m1 += dxh[i];
                m2 += dxh[i] * xh[i];
            }
            let (m1, m2) = (m1 / c as f32, m2 / c as f32);
            for i in 0..c {
                dxr[i] = rstd * (dxh[i] - m1 - xh[i] * m2);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from(n + 2 * c)))
    }
}

/// Layer norm of `x` over its last dimension with gain `w` and bias `b` (same values as
/// `candle_nn::ops::layer_norm_slow`; one pass each way on the CPU in `f32`).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && [x.dtype(), w.dtype(), b.dtype()] == [DType::F32; 3] {
        x.contiguous()?
            .apply_op3(&w.contiguous()?, &b.contiguous()?, LayerNorm { eps })
    } else {
        candle_nn::ops::layer_norm_slow(x, w, b, eps)
    }
}

/// Softmax over the last dimension.
struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = crate::gelu::slice(s, l, self.name())?;
        let c = last_dim(l, x.len(), self.name())?;
        let mut out = x.to_vec();
        for row in out.chunks_exact_mut(c) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for v in row.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|v| *v *= inv);
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            y.contiguous()?
                .apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?,
        ))
    }
}

/// `(y, dy) -> y (dy - sum(dy y))` row by row.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, g) = (
            crate::gelu::slice(s1, l1, self.name())?,
            crate::gelu::slice(s2, l2, self.name())?,
        );
        let c = last_dim(l1, y.len(), self.name())?;
        if y.len() != g.len() {
            candle_core::bail!("{}: shapes disagree", self.name());
        }
        let mut out = Vec::with_capacity(y.len());
        for (yr, gr) in y.chunks_exact(c).zip(g.chunks_exact(c)) {
            let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
            out.extend(yr.iter().zip(gr).map(|(y, g)| y * (g - dot)));
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Softmax of `x` over its last dimension (same values as `candle_nn::ops::softmax`; one pass
/// each way on the CPU in `f32`).
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(Softmax)
    } else {
        candle_nn::ops::softmax(x, D::Minus1)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn seeded(n: usize, seed: u64, scale: f64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::seed(seed);
        (0..n).map(|_| (rng.normal() * scale) as f32).collect()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn layer_norm_and_softmax_match_candles_compositions_and_their_gradients() {
        let dev = Device::Cpu;
        let (rows, c) = (6, 16);
        let x = Var::from_vec(seeded(rows * c, 1, 2.0), (2, 3, c), &dev).unwrap();
        let w = Var::from_vec(seeded(c, 2, 1.0), c, &dev).unwrap();
        let b = Var::from_vec(seeded(c, 3, 1.0), c, &dev).unwrap();
        // Weights on the outputs, so that the gradients differ from position to position.
        let r = Tensor::from_vec(seeded(rows * c, 4, 1.0), (2, 3, c), &dev).unwrap();
        let (x, w, b) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
        type Op<'a> = Box<dyn Fn(bool) -> Tensor + 'a>;
        let cases: [(&str, Op, Vec<&Tensor>); 2] = [
            (
                "layer norm",
                Box::new(|fused| {
                    if fused {
                        layer_norm(x, w, b, 1e-5).unwrap()
                    } else {
                        candle_nn::ops::layer_norm_slow(x, w, b, 1e-5).unwrap()
                    }
                }),
                vec![x, w, b],
            ),
            (
                "softmax",
                Box::new(|fused| {
                    if fused {
                        softmax_last_dim(x).unwrap()
                    } else {
                        candle_nn::ops::softmax(x, D::Minus1).unwrap()
                    }
                }),
                vec![x],
            ),
        ];
        for (name, op, inputs) in &cases {
            let (ours, theirs) = (op(true), op(false));
            assert!(max_diff(&ours, &theirs) < 1e-5, "{name}");
            let g1 = (&ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&theirs * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for t in inputs {
                let (a, b) = (g1.get(t).unwrap(), g2.get(t).unwrap());
                assert_eq!(a.dims(), t.dims(), "{name}");
                let scale = b
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(scale > 1e-3, "{name}: gradient {scale}");
                assert!(max_diff(a, b) < 1e-4 * scale.max(1.0), "{name}: gradient");
            }
        }
        // Rows of -1e9 (the attention mask) but one value.
        let masked = Tensor::new(&[[0.5f32, -1e9, -1e9], [1.0, 2.0, -1e9]], &dev).unwrap();
        let y = softmax_last_dim(&masked).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(y[0], [1.0, 0.0, 0.0]);
        assert!((y[1][1] - 1.0 / (1.0 + (-1f32).exp())).abs() < 1e-6);
    }
}
