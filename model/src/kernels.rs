//! Loops shared by the hand-written training passes ([`crate::fast_cnn`], [`crate::fast_lm`]): a
//! bounds-checked matrix product that writes into, or adds onto, a caller's buffer, so a training
//! step allocates nothing (over the `gemm` crate, the kernel candle's own CPU matmul calls, or on
//! one thread of a CPU with AVX-512 over this file's own faster kernel, [`avx512`]); and a
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
    /// Single-threaded on a CPU with AVX-512: products of at least [`avx512::MIN_WORK`]
    /// multiply-adds take [`avx512::gemm`] instead of the `gemm` crate.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    avx512: bool,
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
            avx512: n <= 1 && avx512::available(),
        }
    }

    /// The `gemm` crate for every product, whatever the CPU (for comparisons).
    #[cfg(test)]
    pub fn crate_only() -> Self {
        Gemm {
            avx512: false,
            ..Gemm::new()
        }
    }

    /// One thread, and the AVX-512 product where the CPU has it (what `RAYON_NUM_THREADS=1`
    /// gives), whatever the test process's thread count.
    #[cfg(test)]
    pub fn single_threaded() -> Self {
        Gemm {
            par: Parallelism::None,
            avx512: avx512::available(),
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
        #[cfg(target_arch = "x86_64")]
        if self.avx512 && d.rows * d.cols * a.cols >= avx512::MIN_WORK {
            // SAFETY: AVX-512F was detected at run time (`Gemm::new`); the views were checked
            // against their slices above, and `avx512::gemm` reads and writes only elements
            // `(r, c)` with `r < rows`, `c < cols` of each view.
            unsafe {
                avx512::gemm(
                    (d.rows, d.cols, a.cols),
                    avx512::View {
                        ptr: dst.as_mut_ptr(),
                        rs: d.rs,
                        cs: d.cs,
                    },
                    accumulate,
                    avx512::View {
                        ptr: lhs.as_ptr(),
                        rs: a.rs,
                        cs: a.cs,
                    },
                    avx512::View {
                        ptr: rhs.as_ptr(),
                        rs: b.rs,
                        cs: b.cs,
                    },
                );
            }
            return Ok(());
        }
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

/// A single-threaded AVX-512 matrix product for the shapes of the hand-written training passes
/// (hundreds of rows and columns, `k` up to a few hundred). The `gemm` crate runs its AVX2 kernel
/// on one core here (its AVX-512 one needs its `x86-v4` feature, which made the transformer's
/// step slower still on the AMD EPYC measured); on that machine this product took the
/// transformer's hand-written step (`lm_speed --only fast --threads 1`) from 95.7 to 69.5 ms
/// and the CNN's (`cnn_speed --threads 1`) from 56 to 51 ms. BLIS's loop order, a packed
/// `KC x NC` block of the right operand and `MC x KC` block of the left (each read in place where
/// its layout allows: whole 12-row panels of the left, whole 32-column panels of a row-major
/// right), and a 12 x 32 register tile (24 of the 32 `zmm` registers) updated by broadcast
/// multiply-adds.
mod avx512 {
    /// Products with fewer multiply-adds stay with the `gemm` crate. The transformer's
    /// per-head attention products (64 x 64 x 32) are above it: its step took 69.5 ms with the
    /// threshold at 2^20 (attention on the crate) and 67.6 ms at 2^10.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub const MIN_WORK: usize = 1 << 16;

    /// Whether this CPU has AVX-512F.
    pub fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// A strided matrix view: element `(r, c)` at `ptr + r * rs + c * cs`.
    #[cfg(target_arch = "x86_64")]
    pub struct View<P> {
        pub ptr: P,
        pub rs: usize,
        pub cs: usize,
    }

    #[cfg(target_arch = "x86_64")]
    pub use imp::gemm;

    #[cfg(target_arch = "x86_64")]
    mod imp {
        use std::arch::x86_64::*;
        use std::cell::RefCell;

        use super::View;

        /// Rows and columns of the register tile.
        const MR: usize = 12;
        const NR: usize = 32;
        /// Depth, rows and columns of the packed blocks.
        const KC: usize = 512;
        const MC: usize = 48;
        const NC: usize = 512;

        thread_local! {
            /// Packed blocks of the left and right operands, reused from call to call.
            static PACKED: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
        }

        /// `c = a * pb` (or `c += a * pb` with `add`) for one `MR x NR` tile: `a` is `MR` rows
        /// of depth `kc` with element `(i, p)` at `a + i * a_rs + p * a_cs` (a packed panel:
        /// `a_rs = 1`, `a_cs = MR`; or the left operand itself), `pb` `kc` rows of `NR`
        /// contiguous values `pb_rs` apart (a packed panel: `pb_rs = NR`; or the right operand
        /// itself), `c` row-major with rows `c_rs` apart.
        ///
        /// # Safety
        /// AVX-512F must be available; every address above must be readable (`c` writable) for
        /// `i < MR`, `p < kc`, and `NR` columns of `c`. Offsets use `wrapping_add` (the caller
        /// checked the bounds), so that the loop carries no debug-build pointer checks.
        #[target_feature(enable = "avx512f")]
        #[inline(never)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn kernel(
            kc: usize,
            a: *const f32,
            a_rs: usize,
            a_cs: usize,
            pb: *const f32,
            pb_rs: usize,
            c: *mut f32,
            c_rs: usize,
            add: bool,
        ) {
            macro_rules! z {
                () => {
                    _mm512_setzero_ps()
                };
            }
            let (mut c00, mut c01, mut c10, mut c11) = (z!(), z!(), z!(), z!());
            let (mut c20, mut c21, mut c30, mut c31) = (z!(), z!(), z!(), z!());
            let (mut c40, mut c41, mut c50, mut c51) = (z!(), z!(), z!(), z!());
            let (mut c60, mut c61, mut c70, mut c71) = (z!(), z!(), z!(), z!());
            let (mut c80, mut c81, mut c90, mut c91) = (z!(), z!(), z!(), z!());
            let (mut ca0, mut ca1, mut cb0, mut cb1) = (z!(), z!(), z!(), z!());
            let (mut pa, mut pb) = (a, pb);
            for _ in 0..kc {
                // SAFETY: `pa` and `pb` stay inside the caller's operands.
                unsafe {
                    let b0 = _mm512_loadu_ps(pb);
                    let b1 = _mm512_loadu_ps(pb.wrapping_add(16));
                    macro_rules! row {
                        ($i:expr, $x:ident, $y:ident) => {
                            let v = _mm_load_ss(pa.wrapping_add($i * a_rs));
                            let a = _mm512_set1_ps(_mm_cvtss_f32(v));
                            $x = _mm512_fmadd_ps(a, b0, $x);
                            $y = _mm512_fmadd_ps(a, b1, $y);
                        };
                    }
                    row!(0, c00, c01);
                    row!(1, c10, c11);
                    row!(2, c20, c21);
                    row!(3, c30, c31);
                    row!(4, c40, c41);
                    row!(5, c50, c51);
                    row!(6, c60, c61);
                    row!(7, c70, c71);
                    row!(8, c80, c81);
                    row!(9, c90, c91);
                    row!(10, ca0, ca1);
                    row!(11, cb0, cb1);
                }
                pa = pa.wrapping_add(a_cs);
                pb = pb.wrapping_add(pb_rs);
            }
            // SAFETY: `c` has MR rows of NR values, `c_rs` apart.
            unsafe {
                macro_rules! store {
                    ($i:expr, $x:ident, $y:ident) => {
                        let (p0, p1) = (c.wrapping_add($i * c_rs), c.wrapping_add($i * c_rs + 16));
                        if add {
                            _mm512_storeu_ps(p0, _mm512_add_ps(_mm512_loadu_ps(p0), $x));
                            _mm512_storeu_ps(p1, _mm512_add_ps(_mm512_loadu_ps(p1), $y));
                        } else {
                            _mm512_storeu_ps(p0, $x);
                            _mm512_storeu_ps(p1, $y);
                        }
                    };
                }
                store!(0, c00, c01);
                store!(1, c10, c11);
                store!(2, c20, c21);
                store!(3, c30, c31);
                store!(4, c40, c41);
                store!(5, c50, c51);
                store!(6, c60, c61);
                store!(7, c70, c71);
                store!(8, c80, c81);
                store!(9, c90, c91);
                store!(10, ca0, ca1);
                store!(11, cb0, cb1);
            }
        }

        /// Packs rows `r0..r0 + h` (h <= MR), depths `p0..p0 + kb` of `a` into `out` (`kb x MR`,
        /// k-major), rows past `h` zero.
        ///
        /// # Safety
        /// Every element read lies inside `a`'s checked view.
        #[target_feature(enable = "avx512f")]
        unsafe fn pack_a(
            a: &View<*const f32>,
            r0: usize,
            h: usize,
            p0: usize,
            kb: usize,
            out: &mut [f32],
        ) {
            let out = &mut out[..kb * MR];
            let at = |r: usize, p: usize| a.ptr.wrapping_add(r * a.rs + p * a.cs);
            // SAFETY: (r0 + i, p0 + p) with i < h, p < kb lie inside the view.
            unsafe {
                if a.rs == 1 {
                    for (p, o) in out.chunks_exact_mut(MR).enumerate() {
                        std::ptr::copy_nonoverlapping(at(r0, p0 + p), o.as_mut_ptr(), h);
                        o[h..].fill(0.0);
                    }
                } else {
                    let o = out.as_mut_ptr();
                    for i in 0..MR {
                        if i < h {
                            let src = at(r0 + i, p0);
                            for p in 0..kb {
                                *o.wrapping_add(p * MR + i) = *src.wrapping_add(p * a.cs);
                            }
                        } else {
                            for p in 0..kb {
                                *o.wrapping_add(p * MR + i) = 0.0;
                            }
                        }
                    }
                }
            }
        }

        /// Packs depths `p0..p0 + kb`, columns `c0..c0 + w` (w <= NR) of `b` into `out`
        /// (`kb x NR`), columns past `w` zero.
        ///
        /// # Safety
        /// Every element read lies inside `b`'s checked view.
        #[target_feature(enable = "avx512f")]
        unsafe fn pack_b(
            b: &View<*const f32>,
            p0: usize,
            kb: usize,
            c0: usize,
            w: usize,
            out: &mut [f32],
        ) {
            let out = &mut out[..kb * NR];
            let at = |p: usize, c: usize| b.ptr.wrapping_add(p * b.rs + c * b.cs);
            // SAFETY: (p0 + p, c0 + j) with p < kb, j < w lie inside the view.
            unsafe {
                if b.cs == 1 {
                    for (p, o) in out.chunks_exact_mut(NR).enumerate() {
                        std::ptr::copy_nonoverlapping(at(p0 + p, c0), o.as_mut_ptr(), w);
                        o[w..].fill(0.0);
                    }
                } else {
                    let o = out.as_mut_ptr();
                    for j in 0..NR {
                        if j < w {
                            let src = at(p0, c0 + j);
                            for p in 0..kb {
                                *o.wrapping_add(p * NR + j) = *src.wrapping_add(p * b.rs);
                            }
                        } else {
                            for p in 0..kb {
                                *o.wrapping_add(p * NR + j) = 0.0;
                            }
                        }
                    }
                }
            }
        }

        /// `dst = a * b`, or `dst += a * b` with `accumulate`, for `(m, n, k)`.
        ///
        /// # Safety
        /// AVX-512F must be available; every element `(r, c)` with `r`, `c` below the view's
        /// rows and columns must lie inside the memory its pointer addresses (`dst`'s writable
        /// and aliasing neither input).
        #[target_feature(enable = "avx512f")]
        pub unsafe fn gemm(
            (m, n, k): (usize, usize, usize),
            dst: View<*mut f32>,
            accumulate: bool,
            a: View<*const f32>,
            b: View<*const f32>,
        ) {
            PACKED.with(|cell| {
                let mut packed = cell.borrow_mut();
                let (pa, pb) = &mut *packed;
                if pa.len() < MC * KC {
                    pa.resize(MC * KC, 0.0);
                }
                if pb.len() < KC * NC {
                    pb.resize(KC * NC, 0.0);
                }
                let mut tile = [0.0f32; MR * NR];
                for jc in (0..n).step_by(NC) {
                    let nb = NC.min(n - jc);
                    for pc in (0..k).step_by(KC) {
                        let kb = KC.min(k - pc);
                        for (i, jr) in (0..nb).step_by(NR).enumerate() {
                            let w = NR.min(nb - jr);
                            if b.cs == 1 && w == NR {
                                // Read in place below.
                                continue;
                            }
                            // SAFETY: inside `b`'s view (the caller's promise).
                            unsafe { pack_b(&b, pc, kb, jc + jr, w, &mut pb[i * kb * NR..]) };
                        }
                        let first = pc == 0 && !accumulate;
                        for ic in (0..m).step_by(MC) {
                            let mb = MC.min(m - ic);
                            for (i, ir) in (0..mb).step_by(MR).enumerate() {
                                let h = MR.min(mb - ir);
                                if h < MR {
                                    // SAFETY: inside `a`'s view.
                                    unsafe {
                                        pack_a(&a, ic + ir, h, pc, kb, &mut pa[i * kb * MR..])
                                    };
                                }
                            }
                            for (j, jr) in (0..nb).step_by(NR).enumerate() {
                                let w = NR.min(nb - jr);
                                // A whole panel of row-major columns is read in place.
                                let (panel_b, b_rs) = if b.cs == 1 && w == NR {
                                    (b.ptr.wrapping_add(pc * b.rs + jc + jr), b.rs)
                                } else {
                                    (pb[j * kb * NR..].as_ptr(), NR)
                                };
                                for (i, ir) in (0..mb).step_by(MR).enumerate() {
                                    let h = MR.min(mb - ir);
                                    // A whole panel of rows is read in place; a partial one
                                    // was packed with zero rows.
                                    let (ap, a_rs, a_cs) = if h == MR {
                                        (
                                            a.ptr.wrapping_add((ic + ir) * a.rs + pc * a.cs),
                                            a.rs,
                                            a.cs,
                                        )
                                    } else {
                                        (pa[i * kb * MR..].as_ptr(), 1, MR)
                                    };
                                    let at = (ic + ir) * dst.rs + (jc + jr) * dst.cs;
                                    if h == MR && w == NR && dst.cs == 1 {
                                        // SAFETY: AVX-512F is there (the caller's promise); the
                                        // whole tile lies inside `dst`'s view.
                                        unsafe {
                                            kernel(
                                                kb,
                                                ap,
                                                a_rs,
                                                a_cs,
                                                panel_b,
                                                b_rs,
                                                dst.ptr.wrapping_add(at),
                                                dst.rs,
                                                !first,
                                            )
                                        };
                                        continue;
                                    }
                                    // SAFETY: as above, into the local tile.
                                    unsafe {
                                        kernel(
                                            kb,
                                            ap,
                                            a_rs,
                                            a_cs,
                                            panel_b,
                                            b_rs,
                                            tile.as_mut_ptr(),
                                            NR,
                                            false,
                                        )
                                    };
                                    for (r, t) in tile.chunks_exact(NR).take(h).enumerate() {
                                        let d = dst.ptr.wrapping_add(at + r * dst.rs);
                                        for (c, v) in t[..w].iter().enumerate() {
                                            let to = d.wrapping_add(c * dst.cs);
                                            // SAFETY: (ic + ir + r, jc + jr + c) is inside
                                            // `dst`'s view.
                                            unsafe {
                                                if first {
                                                    *to = *v;
                                                } else {
                                                    *to += *v;
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX-512 product against the `gemm` crate's on shapes with remainders in every
    /// direction (rows past MC and MR, columns past NC and NR, depth past KC), transposed
    /// operands, a transposed destination, overwriting and accumulating. Vacuous on a CPU without
    /// AVX-512F (where it is never used).
    #[test]
    fn the_avx512_product_equals_the_gemm_crates() {
        let fast = Gemm::single_threaded();
        if !fast.avx512 {
            return;
        }
        let reference = Gemm::crate_only();
        let mut rng = crate::rng::Rng::seed(11);
        for (m, n, k) in [
            (133, 77, 130),
            (97, 45, 600),
            (600, 40, 50),
            (50, 700, 40),
            (768, 74, 128),
        ] {
            assert!(m * n * k >= avx512::MIN_WORK);
            let mut r = |len: usize| -> Vec<f32> {
                (0..len).map(|_| rng.next_f64() as f32 - 0.5).collect()
            };
            let (a, b, start) = (r(m * k), r(k * n), r(m * n));
            for (ta, tb, td, acc) in [
                (false, false, false, false),
                (true, false, false, true),
                (false, true, true, false),
                (true, true, true, true),
            ] {
                let am = if ta {
                    Mat::rows(k, m).t()
                } else {
                    Mat::rows(m, k)
                };
                let bm = if tb {
                    Mat::rows(n, k).t()
                } else {
                    Mat::rows(k, n)
                };
                let dm = if td {
                    Mat::rows(n, m).t()
                } else {
                    Mat::rows(m, n)
                };
                let (mut want, mut got) = (start.clone(), start.clone());
                reference.run(&mut want, dm, acc, &a, am, &b, bm).unwrap();
                fast.run(&mut got, dm, acc, &a, am, &b, bm).unwrap();
                for (i, (x, y)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (x - y).abs() <= 1e-5 * (k as f32).sqrt() + 1e-5 * y.abs(),
                        "{m}x{n}x{k} {ta} {tb} {td} {acc} [{i}]: {x} vs {y}"
                    );
                }
            }
        }
    }

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
