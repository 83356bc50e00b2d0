//! Loops shared by the hand-written training passes ([`crate::fast_cnn`]): a bounds-checked
//! matrix product over the `gemm` crate (the kernel candle's own CPU matmul calls) that writes
//! into, or adds onto, a caller's buffer, so a training step allocates nothing; and a
//! convolution's geometry ([`crate::conv`] has the CNN's own loops).

use gemm::Parallelism;

use crate::error::{Error, Result};

/// A broken invariant of the hand-written passes (unreachable for the models they accept).
pub(crate) fn internal(what: impl Into<String>) -> Error {
    Error::Candle(candle_core::Error::Msg(format!(
        "fast path: {}",
        what.into()
    )))
}

/// A `rows x cols` matrix view: element `(r, c)` sits at `r * rs + c * cs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl Mat {
    /// A row-major `rows x cols` matrix.
    pub fn rows(rows: usize, cols: usize) -> Self {
        Mat {
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose, as strides.
    pub fn t(self) -> Self {
        Mat {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// How many values from the start of the view's slice it reaches.
    fn span(self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1
        }
    }
}

/// The matrix product, single-threaded or on `RAYON_NUM_THREADS` threads as candle's is.
#[derive(Clone, Copy)]
pub(crate) struct Gemm {
    par: Parallelism,
}

impl Gemm {
    /// candle's choice of threads (`candle_core::utils::get_num_threads`), read once.
    pub fn new() -> Self {
        let n = candle_core::utils::get_num_threads();
        Gemm {
            par: if n > 1 {
                Parallelism::Rayon(n)
            } else {
                Parallelism::None
            },
        }
    }

    /// `dst = lhs * rhs`, or `dst += lhs * rhs` when `accumulate`; every view is checked against
    /// its slice first.
    // Private to the crate, and each argument is a matrix or its view; a struct would only
    // rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        dst: &mut [f32],
        d: Mat,
        accumulate: bool,
        lhs: &[f32],
        a: Mat,
        rhs: &[f32],
        b: Mat,
    ) -> Result<()> {
        if a.rows != d.rows || b.cols != d.cols || a.cols != b.rows {
            return Err(internal(format!("matmul shapes {a:?} x {b:?} -> {d:?}")));
        }
        if d.span() > dst.len() || a.span() > lhs.len() || b.span() > rhs.len() {
            return Err(internal(format!(
                "matmul views {a:?} x {b:?} -> {d:?} beyond {} / {} / {} values",
                lhs.len(),
                rhs.len(),
                dst.len()
            )));
        }
        if d.rows == 0 || d.cols == 0 {
            return Ok(());
        }
        if a.cols == 0 {
            if !accumulate {
                for r in 0..d.rows {
                    for c in 0..d.cols {
                        dst[r * d.rs + c * d.cs] = 0.0;
                    }
                }
            }
            return Ok(());
        }
        let s = |x: usize| x as isize;
        // SAFETY: every index the product touches, `(rows - 1) * rs + (cols - 1) * cs` at most
        // for each view, was checked to lie inside its slice above; `dst` is borrowed mutably,
        // so it aliases neither input.
        unsafe {
            gemm::gemm(
                d.rows,
                d.cols,
                a.cols,
                dst.as_mut_ptr(),
                s(d.cs),
                s(d.rs),
                accumulate,
                lhs.as_ptr(),
                s(a.cs),
                s(a.rs),
                rhs.as_ptr(),
                s(b.cs),
                s(b.rs),
                1.0,
                1.0,
                false,
                false,
                false,
                self.par,
            );
        }
        Ok(())
    }
}

/// The geometry of a stride-1 convolution with "same" padding `k / 2` (odd `k`) on one image of
/// `cin x h x w`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvGeom {
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
}

impl ConvGeom {
    /// Values of one image.
    pub fn image(&self) -> usize {
        self.cin * self.h * self.w
    }

    /// Pixels of one image (= outputs per output channel).
    pub fn pixels(&self) -> usize {
        self.h * self.w
    }

    /// Rows of the column matrix: one per (input channel, kernel row, kernel column).
    pub fn patch(&self) -> usize {
        self.cin * self.k * self.k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_checks_its_views_and_accumulates() {
        let g = Gemm::new();
        let a = [1.0, 2.0, 3.0, 4.0];
        let mut d = [1.0; 4];
        // d += a^T a
        g.run(
            &mut d,
            Mat::rows(2, 2),
            true,
            &a,
            Mat::rows(2, 2).t(),
            &a,
            Mat::rows(2, 2),
        )
        .unwrap();
        assert_eq!(d, [11.0, 15.0, 15.0, 21.0]);
        let short = [0.0; 3];
        assert!(
            g.run(
                &mut d,
                Mat::rows(2, 2),
                false,
                &short,
                Mat::rows(2, 2),
                &a,
                Mat::rows(2, 2)
            )
            .is_err()
        );
        assert!(
            g.run(
                &mut d,
                Mat::rows(2, 2),
                false,
                &a,
                Mat::rows(2, 1),
                &a,
                Mat::rows(1, 2)
            )
            .is_ok()
        );
        assert_eq!(d, [1.0, 2.0, 2.0, 4.0]);
    }
}
