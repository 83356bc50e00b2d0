//! A fixed low-pass filter on the first dense layer's update of an MLP over images.
//!
//! Each hidden unit's row of `fc1.weight` is an image (`channels x height x width`). Under
//! DP-SGD every coordinate of the released update carries the same Gaussian noise, and for
//! SGD near a minimum the loss that noise costs grows with the number of coordinates it enters
//! (for a quadratic with curvature `H` and isotropic noise `s^2` per coordinate, the stationary
//! excess loss is about `lr s^2 d / 4`, whatever `H`). Digits (and most natural images) keep
//! almost all of their energy in low spatial frequencies, so projecting each row of the
//! first layer's update onto the lowest `k x k` frequencies of the orthonormal 2-D DCT-II removes
//! most of that noise and little of the signal. The basis is fixed before any data is seen, and
//! the projection is applied to the released (noised) aggregate, so it is post-processing: it
//! costs no privacy. The model keeps its shape (every `fc1.weight` entry stays a parameter);
//! only the first layer's updates are confined to `k x k x channels` dimensions per unit on top
//! of its initial weights.
//!
//! Deterministic: fixed-order f64 arithmetic rounded to f32, so every node applying it to the
//! same committed aggregate gets the same bits.

use crate::dp::l2_norm;
use crate::error::{Error, Result};
use crate::spec::{InputShape, ModelSpec};

/// The projection of `fc1.weight`'s rows onto the lowest `k x k` 2-D DCT frequencies.
#[derive(Debug, Clone)]
pub struct LowPass {
    /// Offset of `fc1.weight` in the flat parameter vector.
    offset: usize,
    /// Rows of `fc1.weight` (hidden units).
    rows: usize,
    /// Image planes per row.
    channels: usize,
    height: usize,
    width: usize,
    /// Frequencies kept per axis.
    k: usize,
    /// The first `k` orthonormal DCT-II basis vectors over the rows (`k x height`) and the
    /// columns (`k x width`).
    basis_h: Vec<f64>,
    basis_w: Vec<f64>,
}

/// The first `k` rows of the orthonormal DCT-II matrix of size `n`: row `u` is
/// `c(u) cos(pi (2x + 1) u / 2n)`, `c(0) = sqrt(1/n)`, `c(u) = sqrt(2/n)`.
fn dct_rows(n: usize, k: usize) -> Vec<f64> {
    let mut m = Vec::with_capacity(k * n);
    for u in 0..k {
        let c = if u == 0 {
            (1.0 / n as f64).sqrt()
        } else {
            (2.0 / n as f64).sqrt()
        };
        for x in 0..n {
            let angle = std::f64::consts::PI * (2 * x + 1) as f64 * u as f64 / (2 * n) as f64;
            m.push(c * angle.cos());
        }
    }
    m
}

impl LowPass {
    /// The filter for `model`'s first layer, keeping `k` frequencies per image axis. The model
    /// must be a dense stack over image input, and `k` at least 1 and at most the image's
    /// smaller side.
    pub fn for_model(model: &ModelSpec, k: usize) -> Result<LowPass> {
        let bad = |why: String| Error::Parse {
            kind: "first-layer low-pass",
            input: format!("{k} on {model}"),
            why,
        };
        let InputShape::Image {
            channels,
            height,
            width,
        } = model.input()
        else {
            return Err(bad("needs image input (its rows are images)".into()));
        };
        if !model.is_dense_stack() {
            return Err(bad("needs a dense model (mlp or logistic)".into()));
        }
        if k == 0 || k > height.min(width) {
            return Err(bad(format!(
                "keeps 1 to {} frequencies per axis",
                height.min(width)
            )));
        }
        let mut offset = 0;
        for p in model.layout() {
            if p.name == "fc1.weight" {
                let rows = p.shape[0];
                return Ok(LowPass {
                    offset,
                    rows,
                    channels,
                    height,
                    width,
                    k,
                    basis_h: dct_rows(height, k),
                    basis_w: dct_rows(width, k),
                });
            }
            offset += p.numel();
        }
        Err(bad("the model has no fc1.weight".into()))
    }

    /// Frequencies kept per axis.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The share of `change`'s first-layer energy (a whole flat parameter vector) outside the
    /// filter's band: 0 for a change that went through [`LowPass::apply`], 0 for no change.
    pub fn outside_share(&self, change: &[f32]) -> Result<f64> {
        let mut inside = change.to_vec();
        self.apply(&mut inside)?;
        let layer = self.offset..self.offset + self.rows * self.channels * self.height * self.width;
        let (change, inside) = (&change[layer.clone()], &inside[layer]);
        let outside: Vec<f32> = change.iter().zip(inside).map(|(a, b)| a - b).collect();
        let total = l2_norm(change);
        Ok(if total > 0.0 {
            (l2_norm(&outside) / total).powi(2)
        } else {
            0.0
        })
    }

    /// Projects `fc1.weight`'s part of `update` (a whole flat parameter vector) in place;
    /// everything else is left as it is.
    pub fn apply(&self, update: &mut [f32]) -> Result<()> {
        let plane = self.height * self.width;
        let len = self.rows * self.channels * plane;
        let end = self.offset + len;
        let Some(w) = update.get_mut(self.offset..end) else {
            return Err(Error::WrongLength {
                got: update.len(),
                expected: end,
            });
        };
        let (h, wd, k) = (self.height, self.width, self.k);
        let mut t = vec![0.0f64; k * wd];
        let mut y = vec![0.0f64; k * k];
        for img in w.chunks_exact_mut(plane) {
            // t = B_h X (k x width), y = t B_w^T (k x k).
            t.iter_mut().for_each(|v| *v = 0.0);
            for u in 0..k {
                for r in 0..h {
                    let b = self.basis_h[u * h + r];
                    for c in 0..wd {
                        t[u * wd + c] += b * f64::from(img[r * wd + c]);
                    }
                }
            }
            for u in 0..k {
                for v in 0..k {
                    y[u * k + v] = (0..wd)
                        .map(|c| t[u * wd + c] * self.basis_w[v * wd + c])
                        .sum();
                }
            }
            // X' = B_h^T y B_w: first s = y B_w (k x width), then B_h^T s.
            for u in 0..k {
                for c in 0..wd {
                    t[u * wd + c] = (0..k)
                        .map(|v| y[u * k + v] * self.basis_w[v * wd + c])
                        .sum();
                }
            }
            for r in 0..h {
                for c in 0..wd {
                    let v: f64 = (0..k)
                        .map(|u| self.basis_h[u * h + r] * t[u * wd + c])
                        .sum();
                    img[r * wd + c] = v as f32;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn mnist_2nn() -> ModelSpec {
        ModelSpec::mlp()
    }

    impl LowPass {
        /// Dimensions each first-layer row keeps out of `channels x height x width`.
        fn kept_per_row(&self) -> (usize, usize) {
            (
                self.channels * self.k * self.k,
                self.channels * self.height * self.width,
            )
        }
    }

    #[test]
    fn the_basis_is_orthonormal() {
        let b = dct_rows(28, 28);
        for u in 0..28 {
            for v in 0..28 {
                let dot: f64 = (0..28).map(|x| b[u * 28 + x] * b[v * 28 + x]).sum();
                let want = if u == v { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-12, "rows {u}, {v}: {dot}");
            }
        }
    }

    #[test]
    fn it_touches_only_the_first_layer_weights_and_is_a_projection() {
        let spec = mnist_2nn();
        let lp = LowPass::for_model(&spec, 10).unwrap();
        let n = spec.num_params();
        let mut rng = Rng::seed(7);
        let orig: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        let mut once = orig.clone();
        lp.apply(&mut once).unwrap();
        let (start, end) = (lp.offset, lp.offset + 200 * 784);
        assert_eq!(&once[..start], &orig[..start]);
        assert_eq!(&once[end..], &orig[end..]);
        assert_ne!(&once[start..end], &orig[start..end]);
        // Idempotent (to rounding), and it keeps 100 of 784 dimensions per row: about
        // 100 / 784 of white noise's energy.
        let mut twice = once.clone();
        lp.apply(&mut twice).unwrap();
        for (a, b) in once[start..end].iter().zip(&twice[start..end]) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        let energy = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>();
        let kept = energy(&once[start..end]) / energy(&orig[start..end]);
        assert!((kept - 100.0 / 784.0).abs() < 0.01, "kept {kept}");
        assert_eq!(lp.kept_per_row(), (100, 784));
        // What a filtered change leaves outside the band, and what white noise does.
        assert!(lp.outside_share(&once).unwrap() < 1e-10);
        let share = lp.outside_share(&orig).unwrap();
        assert!((share - 684.0 / 784.0).abs() < 0.01, "outside {share}");
        assert_eq!(lp.outside_share(&vec![0.0; n]).unwrap(), 0.0);
    }

    #[test]
    fn a_smooth_row_passes_unchanged() {
        // A row built from the kept frequencies only is its own projection.
        let spec = mnist_2nn();
        let lp = LowPass::for_model(&spec, 6).unwrap();
        let mut update = vec![0.0f32; spec.num_params()];
        let row = &mut update[lp.offset..lp.offset + 784];
        for r in 0..28 {
            for c in 0..28 {
                row[r * 28 + c] = (lp.basis_h[2 * 28 + r] * lp.basis_w[5 * 28 + c]
                    - 0.5 * lp.basis_h[28 + r] * lp.basis_w[c])
                    as f32;
            }
        }
        let before = update.clone();
        lp.apply(&mut update).unwrap();
        for (a, b) in before.iter().zip(&update) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_filter() {
        let spec = mnist_2nn();
        for k in [0, 29] {
            assert!(LowPass::for_model(&spec, k).is_err(), "k {k}");
        }
        assert!(LowPass::for_model(&ModelSpec::cnn(), 10).is_err());
        let flat =
            ModelSpec::declare("mlp", &["dense:16".into()], InputShape::Flat(64), 10).unwrap();
        assert!(LowPass::for_model(&flat, 4).is_err());
        let lp = LowPass::for_model(&spec, 4).unwrap();
        assert!(lp.apply(&mut [0.0; 10]).is_err());
    }
}
