//! The inner loops of [`crate::fast_cnn`]'s pixel-major convolutions: a sparse sum of 8-wide
//! segments ([`seg_sum`], both halves of a pooled stage's backward pass) and bias + ReLU + max
//! pooling over a pixel-major convolution output ([`pool_pixels`]).
//!
//! Each kernel has one body, compiled twice: with AVX2 and FMA where the CPU has them (detected
//! once, [`Cpu::detect`]; the multiply-adds are fused there) and portable otherwise. Either way a
//! kernel's result depends only on its inputs and the [`Cpu`] it was given: the order of every sum
//! is fixed.

/// Which version of the kernels runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cpu {
    /// AVX2 and FMA: 8-wide fused multiply-adds.
    fma: bool,
    /// AVX-512F: [`bcast_gemm`]'s kernel.
    avx512: bool,
}

impl Cpu {
    /// The fastest version this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        let fma = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        #[cfg(not(target_arch = "x86_64"))]
        let fma = false;
        #[cfg(all(target_arch = "x86_64", cohort_avx512))]
        let avx512 = std::arch::is_x86_feature_detected!("avx512f");
        #[cfg(not(all(target_arch = "x86_64", cohort_avx512)))]
        let avx512 = false;
        Cpu { fma, avx512 }
    }

    /// Whether [`bcast_gemm`] takes products of `cols` columns on this CPU.
    pub fn bcast(&self, cols: usize) -> bool {
        self.avx512 && cols.is_multiple_of(WIDE)
    }

    /// The portable version (unfused multiply-adds), on any CPU.
    #[cfg(test)]
    pub fn portable() -> Self {
        Cpu {
            fma: false,
            avx512: false,
        }
    }
}

/// Floats of one segment.
pub(crate) const LANES: usize = 8;

/// A term of a sparse sum: the offset its segments start from in the source, and its weight.
pub(crate) type Entry = (u32, f32);

/// For every segment `m` and lane `j < LANES`:
/// `dst[dbase + dseg[m] + j] += sum over entries (o, v) of v * src[o + sseg[m] + j]`,
/// the entries summed in order into a zeroed accumulator that is then added to `dst`. Up to 8
/// segments at a time stay in registers while the entries stream past. Out-of-range offsets
/// panic (they are the caller's invariant).
pub(crate) fn seg_sum(
    cpu: Cpu,
    dst: &mut [f32],
    dbase: usize,
    dseg: &[usize],
    src: &[f32],
    sseg: &[usize],
    entries: &[Entry],
) {
    #[cfg(target_arch = "x86_64")]
    if cpu.fma {
        // SAFETY: `Cpu::detect` found AVX2 and FMA on this CPU (a `Cpu` with `fma` set is only
        // made there).
        unsafe { seg_sum_fma(dst, dbase, dseg, src, sseg, entries) };
        return;
    }
    let _ = cpu;
    seg_sum_body(dst, dbase, dseg, src, sseg, entries, |a, b, c| a * b + c);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn seg_sum_fma(
    dst: &mut [f32],
    dbase: usize,
    dseg: &[usize],
    src: &[f32],
    sseg: &[usize],
    entries: &[Entry],
) {
    let n = dseg.len().min(sseg.len());
    let mut m = 0;
    while m < n {
        let (d, s) = (&dseg[m..], &sseg[m..]);
        let args = (&mut *dst, dbase, d, src, s, entries);
        m += match n - m {
            1 => seg_pass_fma::<1>(args),
            2 => seg_pass_fma::<2>(args),
            3 => seg_pass_fma::<3>(args),
            4 => seg_pass_fma::<4>(args),
            5 => seg_pass_fma::<5>(args),
            6 => seg_pass_fma::<6>(args),
            7 => seg_pass_fma::<7>(args),
            _ => seg_pass_fma::<8>(args),
        };
    }
}

/// Eight floats at any alignment, as one value: read and written as a field of a packed struct,
/// a plain unaligned load or store (`_mm256_loadu_ps` goes through `copy_nonoverlapping`, whose
/// debug-build checks keep the value on the stack).
#[cfg(target_arch = "x86_64")]
#[repr(C, packed)]
struct Unaligned(std::arch::x86_64::__m256);

/// The `LANES` floats at `p`.
///
/// # Safety
/// `p` points to `LANES` readable floats.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load(p: *const f32) -> std::arch::x86_64::__m256 {
    // SAFETY: the caller's; a packed struct has alignment 1.
    unsafe { (*p.cast::<Unaligned>()).0 }
}

/// Writes `v` to the `LANES` floats at `p`.
///
/// # Safety
/// `p` points to `LANES` writable floats.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store(p: *mut f32, v: std::arch::x86_64::__m256) {
    // SAFETY: the caller's; a packed struct has alignment 1.
    unsafe { (*p.cast::<Unaligned>()).0 = v };
}

/// [`seg_pass`] with the `M` accumulators in AVX registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn seg_pass_fma<const M: usize>((dst, dbase, dseg, src, sseg, entries): SegArgs<'_>) -> usize {
    use std::arch::x86_64::{
        __m256, _mm256_add_ps, _mm256_fmadd_ps, _mm256_set1_ps, _mm256_setzero_ps,
    };
    let d: [usize; M] = std::array::from_fn(|i| dseg[i]);
    let s: [usize; M] = std::array::from_fn(|i| sseg[i]);
    let reach = s.iter().max().map_or(0, |m| m + LANES);
    let mut acc: [__m256; M] = [_mm256_setzero_ps(); M];
    for &(o, v) in entries {
        let o = o as usize;
        assert!(o + reach <= src.len(), "segment beyond its source");
        let base = src.as_ptr().wrapping_add(o);
        let v = _mm256_set1_ps(v);
        #[allow(clippy::needless_range_loop)]
        for m in 0..M {
            // SAFETY: o + s[m] + LANES <= o + reach <= src.len(), checked above.
            let x = unsafe { load(base.wrapping_add(s[m])) };
            acc[m] = _mm256_fmadd_ps(v, x, acc[m]);
        }
    }
    for (a, &dofs) in acc.iter().zip(&d) {
        let y = &mut dst[dbase + dofs..dbase + dofs + LANES];
        // SAFETY: `y` holds LANES floats.
        unsafe { store(y.as_mut_ptr(), _mm256_add_ps(load(y.as_ptr()), *a)) };
    }
    M
}

#[inline(always)]
fn seg_sum_body<F: Fn(f32, f32, f32) -> f32 + Copy>(
    dst: &mut [f32],
    dbase: usize,
    dseg: &[usize],
    src: &[f32],
    sseg: &[usize],
    entries: &[Entry],
    fma: F,
) {
    let n = dseg.len().min(sseg.len());
    let mut m = 0;
    while m < n {
        let (d, s) = (&dseg[m..], &sseg[m..]);
        let args = (&mut *dst, dbase, d, src, s, entries);
        m += match n - m {
            1 => seg_pass::<1, F>(args, fma),
            2 => seg_pass::<2, F>(args, fma),
            3 => seg_pass::<3, F>(args, fma),
            4 => seg_pass::<4, F>(args, fma),
            5 => seg_pass::<5, F>(args, fma),
            6 => seg_pass::<6, F>(args, fma),
            7 => seg_pass::<7, F>(args, fma),
            _ => seg_pass::<8, F>(args, fma),
        };
    }
}

/// The arguments of [`seg_sum`] from one segment on.
type SegArgs<'a> = (
    &'a mut [f32],
    usize,
    &'a [usize],
    &'a [f32],
    &'a [usize],
    &'a [Entry],
);

/// [`seg_sum`] for the first `M` segments of the arguments; returns `M`.
#[inline(always)]
fn seg_pass<const M: usize, F: Fn(f32, f32, f32) -> f32 + Copy>(
    (dst, dbase, dseg, src, sseg, entries): SegArgs<'_>,
    fma: F,
) -> usize {
    let d: [usize; M] = std::array::from_fn(|i| dseg[i]);
    let s: [usize; M] = std::array::from_fn(|i| sseg[i]);
    let mut acc = [[0.0f32; LANES]; M];
    for &(o, v) in entries {
        let o = o as usize;
        for (a, &so) in acc.iter_mut().zip(&s) {
            let x = &src[o + so..o + so + LANES];
            for (a, &x) in a.iter_mut().zip(x) {
                *a = fma(v, x, *a);
            }
        }
    }
    for (a, &dofs) in acc.iter().zip(&d) {
        let y = &mut dst[dbase + dofs..dbase + dofs + LANES];
        for (y, &a) in y.iter_mut().zip(a) {
            *y += a;
        }
    }
    M
}

/// Floats of one AVX-512 register.
const WIDE: usize = 16;

#[cfg(all(target_arch = "x86_64", cohort_avx512))]
mod avx512;
#[cfg(all(target_arch = "x86_64", cohort_avx512))]
use avx512::{TILE_ROWS, Tile};

/// A strided matrix operand of [`bcast_gemm`]: element `(i, j)` at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Strided<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

/// `out[r * ors + c] = sum over k < depth of a(r, k) * b[k * bks + c]` for `r < rows` and
/// `c < cols`, each sum in order of `k` with fused multiply-adds, where the columns of `b` (and
/// of `out`) are contiguous: tiles of 6 rows by 16, 32 or 64 columns, accumulated in AVX-512
/// registers, each `a(r, k)` broadcast and each row of `b` loaded once per tile and `k`.
/// Returns `false` (and writes nothing) where this CPU lacks AVX-512F or `cols` is not a
/// multiple of 16: the caller then takes [`crate::kernels::Gemm`]. Panics if a view reaches past
/// its slice.
#[allow(clippy::too_many_arguments)]
pub(crate) fn bcast_gemm(
    cpu: Cpu,
    out: &mut [f32],
    ors: usize,
    a: Strided<'_>,
    b: &[f32],
    bks: usize,
    (rows, cols, depth): (usize, usize, usize),
) -> bool {
    if !cpu.bcast(cols) {
        return false;
    }
    if rows == 0 || cols == 0 {
        return true;
    }
    let reach = |last: usize| last + 1;
    assert!(
        (rows - 1) * ors + cols <= out.len()
            && depth.checked_sub(1).is_none_or(|d| {
                reach((rows - 1) * a.rs + d * a.cs) <= a.data.len() && d * bks + cols <= b.len()
            }),
        "bcast_gemm: a view beyond its slice"
    );
    #[cfg(all(target_arch = "x86_64", cohort_avx512))]
    {
        let proto = Tile {
            out: out.as_mut_ptr(),
            ors,
            a: [a.data.as_ptr(); TILE_ROWS],
            aks: a.cs,
            b: b.as_ptr(),
            bks,
            depth,
            segs: 1,
            a_seg: 0,
            b_seg: 0,
        };
        let base = a.data.as_ptr();
        // SAFETY: AVX-512F was detected (`Cpu::detect`); every index the tiles touch lies in
        // the views checked above.
        unsafe { avx512::tiles(proto, |r| base.wrapping_add(r * a.rs), (rows, cols)) };
        true
    }
    #[cfg(not(all(target_arch = "x86_64", cohort_avx512)))]
    false
}

/// Where a [`conv_gemm`] reads its rows: row `r` is `segs` runs of `len` contiguous floats of
/// `data`, starting at `starts[r] + s step` for run `s`.
#[derive(Clone, Copy)]
pub(crate) struct Runs<'a> {
    pub data: &'a [f32],
    pub starts: &'a [usize],
    pub segs: usize,
    pub step: usize,
    pub len: usize,
}

/// [`bcast_gemm`] with the rows of `a` read in place as runs ([`Runs`]): a convolution's output
/// pixels, each row the `k` kernel rows of its window in a padded pixel-major image, without a
/// column matrix. `out[r * ors + c] = sum over runs s, i < len of a(r, s, i) * b[s * b_seg + i *
/// bks + c]`, in that order, fused. Returns `false` (and writes nothing) where
/// [`Cpu::bcast`]`(cols)` is false. Panics if a view reaches past its slice.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_gemm(
    cpu: Cpu,
    out: &mut [f32],
    ors: usize,
    a: Runs<'_>,
    b: &[f32],
    (bks, b_seg): (usize, usize),
    cols: usize,
) -> bool {
    if !cpu.bcast(cols) {
        return false;
    }
    let rows = a.starts.len();
    if rows == 0 || cols == 0 {
        return true;
    }
    if a.segs == 0 || a.len == 0 {
        for r in 0..rows {
            out[r * ors..r * ors + cols].fill(0.0);
        }
        return true;
    }
    let last = (a.segs - 1) * a.step + a.len;
    let b_last = (a.segs - 1) * b_seg + (a.len - 1) * bks + cols;
    assert!(
        (rows - 1) * ors + cols <= out.len()
            && a.starts.iter().all(|&s| s + last <= a.data.len())
            && b_last <= b.len(),
        "conv_gemm: a view beyond its slice"
    );
    #[cfg(all(target_arch = "x86_64", cohort_avx512))]
    {
        let proto = Tile {
            out: out.as_mut_ptr(),
            ors,
            a: [a.data.as_ptr(); TILE_ROWS],
            aks: 1,
            b: b.as_ptr(),
            bks,
            depth: a.len,
            segs: a.segs,
            a_seg: a.step,
            b_seg,
        };
        let base = a.data.as_ptr();
        // SAFETY: AVX-512F was detected (`Cpu::detect`); every row's runs and every row of `b`
        // lie in the views checked above.
        unsafe { avx512::tiles(proto, |r| base.wrapping_add(a.starts[r]), (rows, cols)) };
        true
    }
    #[cfg(not(all(target_arch = "x86_64", cohort_avx512)))]
    false
}

/// Bias, ReLU and max pooling (window and stride `p`; remainder rows and columns dropped, as
/// candle's `max_pool2d`) of one image's pixel-major convolution output `conv` (`[h * w, c]`:
/// pixel `y * w + x`, then channel). Writes `out` (`[(h / p) * (w / p), c]`), and into `arg` the
/// pixel of each output's first maximum, or `u32::MAX` where the ReLU is off (the output is 0 and
/// passes no gradient). ReLU and the bias commute with the maximum, so both apply once per output.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pool_pixels(
    cpu: Cpu,
    conv: &[f32],
    (h, w, c): (usize, usize, usize),
    p: usize,
    bias: &[f32],
    out: &mut [f32],
    arg: &mut [u32],
) {
    #[cfg(target_arch = "x86_64")]
    if cpu.fma {
        // SAFETY: as in `seg_sum`.
        unsafe { pool_pixels_avx2(conv, (h, w, c), p, bias, out, arg) };
        return;
    }
    let _ = cpu;
    pool_pixels_body(conv, (h, w, c), p, bias, out, arg);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn pool_pixels_avx2(
    conv: &[f32],
    dims: (usize, usize, usize),
    p: usize,
    bias: &[f32],
    out: &mut [f32],
    arg: &mut [u32],
) {
    pool_pixels_body(conv, dims, p, bias, out, arg);
}

#[inline(always)]
fn pool_pixels_body(
    conv: &[f32],
    (h, w, c): (usize, usize, usize),
    p: usize,
    bias: &[f32],
    out: &mut [f32],
    arg: &mut [u32],
) {
    let ow = w / p;
    let windows = out.chunks_exact_mut(c).zip(arg.chunks_exact_mut(c));
    for (q, (best, at)) in windows.take((h / p) * ow).enumerate() {
        let (py, px) = (q / ow, q % ow);
        let first = py * p * w + px * p;
        best.copy_from_slice(&conv[first * c..(first + 1) * c]);
        at.fill(first as u32);
        for dy in 0..p {
            for dx in 0..p {
                if dy + dx == 0 {
                    continue;
                }
                let pix = first + dy * w + dx;
                let row = &conv[pix * c..(pix + 1) * c];
                let pix = pix as u32;
                for ((b, a), &v) in best.iter_mut().zip(at.iter_mut()).zip(row) {
                    let more = v > *b;
                    *b = if more { v } else { *b };
                    *a = if more { pix } else { *a };
                }
            }
        }
        for ((b, a), &bias) in best.iter_mut().zip(at.iter_mut()).zip(bias) {
            let y = *b + bias;
            let on = y > 0.0;
            *b = if on { y } else { 0.0 };
            *a = if on { *a } else { u32::MAX };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::seed(seed);
        (0..n).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect()
    }

    #[test]
    fn seg_sum_is_the_naive_sum_on_every_cpu() {
        let src = values(400, 1);
        let entries: Vec<Entry> = [
            (0u32, 0.5f32),
            (37, -1.25),
            (100, 2.0),
            (3, 0.0),
            (250, 0.75),
        ]
        .into_iter()
        .collect();
        // 11 segments: one pass of 8 and one of 3; destinations overlap (10 and 14).
        let sseg: Vec<usize> = (0..11).map(|m| m * 13).collect();
        let dseg: Vec<usize> = (0..11).map(|m| if m == 1 { 14 } else { m * 10 }).collect();
        let start = values(150, 2);
        let mut want = start.clone();
        for (&d, &s) in dseg.iter().zip(&sseg) {
            for j in 0..LANES {
                let mut acc = 0.0f32;
                for &(o, v) in &entries {
                    acc += v * src[o as usize + s + j];
                }
                want[5 + d + j] += acc;
            }
        }
        for cpu in [Cpu::portable(), Cpu::detect()] {
            let mut got = start.clone();
            seg_sum(cpu, &mut got, 5, &dseg, &src, &sseg, &entries);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() < 1e-5, "{cpu:?} at {i}: {g} vs {w}");
            }
            // Untouched outside the segments.
            assert_eq!(got[..5], start[..5]);
            assert_eq!(got[5 + 108..], start[5 + 108..]);
        }
    }

    #[test]
    fn bcast_gemm_is_the_naive_product_or_declines() {
        // 13 rows (tiles of 6, 6 and 1), 112 columns (registers 4 + 3), depth 9; a read with
        // both strides non-unit (a transposed view).
        let (rows, cols, depth) = (13, 112, 9);
        let a = values(rows * depth * 2, 5);
        let (ars, acs) = (1, 2 * rows);
        let b = values(depth * (cols + 3), 6);
        let bks = cols + 3;
        let ors = cols + 5;
        let mut want = vec![f32::NAN; rows * ors];
        for r in 0..rows {
            for c in 0..cols {
                let mut s = 0.0f32;
                for k in 0..depth {
                    s = a[r * ars + k * acs].mul_add(b[k * bks + c], s);
                }
                want[r * ors + c] = s;
            }
        }
        let view = Strided {
            data: &a,
            rs: ars,
            cs: acs,
        };
        let cpu = Cpu::detect();
        let mut out = vec![f32::NAN; rows * ors];
        let ran = bcast_gemm(cpu, &mut out, ors, view, &b, bks, (rows, cols, depth));
        assert_eq!(ran, cpu.avx512);
        if ran {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            // Fused and in order of k: the naive sum bit for bit; the gaps stay untouched.
            assert_eq!(bits(&out), bits(&want));
        }
        // Columns not a multiple of 16, or the portable CPU: declined, nothing written.
        let mut out = vec![1.0; rows * ors];
        assert!(!bcast_gemm(
            cpu,
            &mut out,
            ors,
            view,
            &b,
            bks,
            (rows, 24, depth)
        ));
        assert!(!bcast_gemm(
            Cpu::portable(),
            &mut out,
            ors,
            view,
            &b,
            bks,
            (rows, 32, depth)
        ));
        assert!(out.iter().all(|&v| v == 1.0));
    }

    #[test]
    fn conv_gemm_reads_runs_in_place_as_the_naive_product() {
        // 8 rows (tiles of 6 and 2) at scattered starts, 3 runs of 5 floats 7 apart, 48 columns
        // (registers 3), b's runs 6 rows apart (a padding row between them, never read).
        let data = values(120, 7);
        let starts = [0, 3, 50, 17, 99, 61, 4, 40];
        let (segs, step, len, cols) = (3, 7, 5, 48);
        let (bks, b_seg) = (cols + 2, 6 * (cols + 2));
        let b = values(segs * b_seg, 8);
        let ors = cols + 1;
        let mut want = vec![f32::NAN; starts.len() * ors];
        for (r, &st) in starts.iter().enumerate() {
            for c in 0..cols {
                let mut acc = 0.0f32;
                for sg in 0..segs {
                    for i in 0..len {
                        acc = data[st + sg * step + i].mul_add(b[sg * b_seg + i * bks + c], acc);
                    }
                }
                want[r * ors + c] = acc;
            }
        }
        let runs = Runs {
            data: &data,
            starts: &starts,
            segs,
            step,
            len,
        };
        let cpu = Cpu::detect();
        let mut out = vec![f32::NAN; starts.len() * ors];
        let ran = conv_gemm(cpu, &mut out, ors, runs, &b, (bks, b_seg), cols);
        assert_eq!(ran, cpu.avx512);
        if ran {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out), bits(&want));
        }
        assert!(!conv_gemm(
            Cpu::portable(),
            &mut out,
            ors,
            runs,
            &b,
            (bks, b_seg),
            cols
        ));
    }

    #[test]
    fn pool_pixels_is_relu_of_the_window_maximum_plus_bias() {
        // 5 x 7 pixels of 9 channels (a lane remainder), windows 2 and 3.
        let (h, w, c) = (5, 7, 9);
        let conv = values(h * w * c, 3);
        let bias = values(c, 4);
        for p in [1, 2, 3] {
            let (oh, ow) = (h / p, w / p);
            for cpu in [Cpu::portable(), Cpu::detect()] {
                let mut out = vec![f32::NAN; oh * ow * c];
                let mut arg = vec![7; oh * ow * c];
                pool_pixels(cpu, &conv, (h, w, c), p, &bias, &mut out, &mut arg);
                for q in 0..oh * ow {
                    let (py, px) = (q / ow, q % ow);
                    for ch in 0..c {
                        let mut best = (f32::NEG_INFINITY, 0);
                        for dy in 0..p {
                            for dx in 0..p {
                                let pix = (py * p + dy) * w + px * p + dx;
                                if conv[pix * c + ch] > best.0 {
                                    best = (conv[pix * c + ch], pix as u32);
                                }
                            }
                        }
                        let y = best.0 + bias[ch];
                        let (want, at) = if y > 0.0 {
                            (y, best.1)
                        } else {
                            (0.0, u32::MAX)
                        };
                        assert_eq!(out[q * c + ch], want, "p {p} q {q} c {ch}");
                        assert_eq!(arg[q * c + ch], at, "p {p} q {q} c {ch}");
                    }
                }
            }
        }
    }
}
