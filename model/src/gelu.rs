//! GELU (the tanh approximation, as candle's `Tensor::gelu` and GPT-2) in one pass over the
//! values, forward and backward. Candle's own backward builds the derivative from about ten
//! separate tensor operations (two `powf`, a `tanh`, products and sums, each a fresh buffer); in
//! the character transformer's step that was about a fifth of the time (BENCHMARKS.md
//! section 9). Here the forward is one custom op and its backward another that computes
//! `grad * gelu'(x)` in one loop. On a non-CPU device it falls back to candle's op.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

/// sqrt(2 / pi).
const K: f32 = 0.797_884_6;
/// The cubic term's coefficient.
const C: f32 = 0.044_715;

/// `tanh(x)` as a rational function (Eigen's and PyTorch's vectorised `tanh` for `f32`: a degree
/// 13/6 minimax fit on `[-7.9, 7.9]`, exactly +-1 in `f32` beyond), a few ulp from libm's `tanhf`
/// and without its call and `expm1f`, which were 15% of the transformer's step.
#[inline(always)]
fn tanh(x: f32) -> f32 {
    const CLAMP: f32 = 7.905_311;
    const A: [f32; 7] = [
        4.893_524_6e-3,
        6.372_619_3e-4,
        1.485_722_4e-5,
        5.122_297e-8,
        -8.604_672e-11,
        2.000_188e-13,
        -2.760_768_5e-16,
    ];
    const B: [f32; 4] = [4.893_525e-3, 2.268_434_6e-3, 1.185_347_1e-4, 1.198_258_4e-6];
    // Without a branch (a select at the end), so that loops over it vectorise.
    let c = x.clamp(-CLAMP, CLAMP);
    let x2 = c * c;
    let p = A.iter().rev().fold(0.0, |acc, a| acc * x2 + a) * c;
    let q = B.iter().rev().fold(0.0, |acc, b| acc * x2 + b);
    let r = p / q;
    if x.abs() < 4e-4 { x } else { r }
}

/// `0.5 x (1 + tanh(K (x + C x^3)))`.
#[inline(always)]
pub(crate) fn value(x: f32) -> f32 {
    0.5 * x * (1.0 + tanh(K * (x + C * x * x * x)))
}

/// d/dx of [`value`]: `0.5 (1 + t) + 0.5 x (1 - t^2) K (1 + 3 C x^2)`, `t = tanh(K (x + C x^3))`.
#[inline(always)]
pub(crate) fn slope(x: f32) -> f32 {
    let t = tanh(K * (x + C * x * x * x));
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * K * (1.0 + 3.0 * C * x * x)
}

/// `out[i] = gelu(x[i])`, in AVX-512 vectors where the CPU has them.
pub(crate) fn values(x: &[f32], out: &mut [f32]) {
    #[inline(always)]
    fn run(x: &[f32], out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = value(v);
        }
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        #[target_feature(enable = "avx512f")]
        fn wide(x: &[f32], out: &mut [f32]) {
            run(x, out)
        }
        // SAFETY: the CPU has AVX-512F (checked just above).
        return unsafe { wide(x, out) };
    }
    run(x, out)
}

/// `grad[i] *= gelu'(x[i])`, in AVX-512 vectors where the CPU has them.
pub(crate) fn times_slopes(x: &[f32], grad: &mut [f32]) {
    #[inline(always)]
    fn run(x: &[f32], grad: &mut [f32]) {
        for (g, &v) in grad.iter_mut().zip(x) {
            *g *= slope(v);
        }
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        #[target_feature(enable = "avx512f")]
        fn wide(x: &[f32], grad: &mut [f32]) {
            run(x, grad)
        }
        // SAFETY: the CPU has AVX-512F (checked just above).
        return unsafe { wide(x, grad) };
    }
    run(x, grad)
}

/// The `f32` values a contiguous layout covers.
pub(crate) fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let v = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => Err(candle_core::Error::Msg(format!(
            "{op} needs a contiguous input"
        ))),
    }
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "fused-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        Ok((
            CpuStorage::F32(x.iter().map(|&v| value(v)).collect()),
            l.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            arg.contiguous()?
                .apply_op2_no_bwd(&grad.contiguous()?, &GeluGrad)?,
        ))
    }
}

/// `(x, grad) -> grad * gelu'(x)`.
struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "fused-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, g) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        if x.len() != g.len() {
            return Err(candle_core::Error::Msg(format!(
                "{}: {} values and {} gradients",
                self.name(),
                x.len(),
                g.len()
            )));
        }
        Ok((
            CpuStorage::F32(x.iter().zip(g).map(|(&x, &g)| g * slope(x)).collect()),
            l1.shape().clone(),
        ))
    }
}

/// GELU of `x` (`f32` on the CPU: one pass each way; otherwise candle's `gelu`).
pub fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1(Gelu)
    } else {
        x.gelu()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn the_rational_tanh_is_within_a_few_ulp_of_libms() {
        let mut worst = 0.0f32;
        for i in -200_000..=200_000 {
            let x = i as f32 * 1e-4;
            let (ours, libm) = (tanh(x), x.tanh());
            worst = worst.max((ours - libm).abs() / libm.abs().max(f32::MIN_POSITIVE));
            assert!(ours.abs() <= 1.0, "{x}");
        }
        assert!(worst < 4.0 * f32::EPSILON, "relative error {worst}");
        assert_eq!(tanh(50.0), 1.0);
        assert_eq!(tanh(-1e30), -1.0);
        assert_eq!(tanh(0.0), 0.0);
    }

    #[test]
    fn matches_candles_gelu_and_its_gradient() {
        let xs: Vec<f32> = (0..401).map(|i| (i as f32 - 200.0) / 25.0).collect();
        let dev = Device::Cpu;
        // Weights on the outputs, so the gradient is not the same for every position.
        let w = Tensor::from_vec(
            xs.iter().map(|x| 1.0 + 0.1 * x).collect::<Vec<f32>>(),
            xs.len(),
            &dev,
        )
        .unwrap();
        let run = |fused: bool| {
            let v = Var::from_vec(xs.clone(), xs.len(), &dev).unwrap();
            let y = if fused {
                gelu(v.as_tensor()).unwrap()
            } else {
                v.as_tensor().gelu().unwrap()
            };
            let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let grad = g.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
            (y.to_vec1::<f32>().unwrap(), grad)
        };
        let (y, gy) = run(true);
        let (c, gc) = run(false);
        for i in 0..xs.len() {
            assert!(
                (y[i] - c[i]).abs() < 1e-5,
                "x {}: {} vs {}",
                xs[i],
                y[i],
                c[i]
            );
            assert!(
                (gy[i] - gc[i]).abs() < 1e-4,
                "x {}: grad {} vs {}",
                xs[i],
                gy[i],
                gc[i]
            );
        }
        // A non-contiguous input (a transpose) gives the same values as its contiguous copy.
        let m = Tensor::from_vec(xs[..400].to_vec(), (20, 20), &dev).unwrap();
        let t = m.t().unwrap();
        assert_eq!(
            gelu(&t).unwrap().to_vec2::<f32>().unwrap(),
            gelu(&t.contiguous().unwrap())
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        );
    }
}
