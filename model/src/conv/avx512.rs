//! [`super::bcast_gemm`]'s and [`super::conv_gemm`]'s AVX-512F kernel. Compiled only where the
//! compiler has stable AVX-512 (Rust 1.89 and later; `model/build.rs` sets `cohort_avx512`): the
//! workspace's minimum Rust is 1.88, where the `gemm` crate runs instead.
// The intrinsics are stable since 1.89, which the build script checked.
#![allow(clippy::incompatible_msrv)]

use std::arch::x86_64::{__m512, _mm512_fmadd_ps, _mm512_set1_ps, _mm512_setzero_ps};

use super::WIDE;

/// Rows of one tile.
pub(super) const TILE_ROWS: usize = 6;

/// The tiles of a product: row `r` of `a` starts at `a(r)`; the rest as [`Tile`].
///
/// # Safety
/// AVX-512F, and every tile inside its views.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tiles(
    proto: Tile,
    a: impl Fn(usize) -> *const f32,
    (rows, cols): (usize, usize),
) {
    let mut c = 0;
    while c < cols {
        let width = (cols - c).min(4 * WIDE);
        let mut r = 0;
        while r < rows {
            let height = (rows - r).min(TILE_ROWS);
            let t = Tile {
                out: proto.out.wrapping_add(r * proto.ors + c),
                a: std::array::from_fn(|i| a(r + i.min(height - 1))),
                b: proto.b.wrapping_add(c),
                ..proto
            };
            // SAFETY: the tile lies inside the views (the caller's).
            unsafe {
                match (height, width / WIDE) {
                    (6, 4) => t.run::<6, 4>(),
                    (5, 4) => t.run::<5, 4>(),
                    (4, 4) => t.run::<4, 4>(),
                    (3, 4) => t.run::<3, 4>(),
                    (2, 4) => t.run::<2, 4>(),
                    (1, 4) => t.run::<1, 4>(),
                    (6, 3) => t.run::<6, 3>(),
                    (6, 2) => t.run::<6, 2>(),
                    (6, 1) => t.run::<6, 1>(),
                    (h, 3) => t.run_rows::<3>(h),
                    (h, 2) => t.run_rows::<2>(h),
                    (h, _) => t.run_rows::<1>(h),
                }
            }
            r += height;
        }
        c += width;
    }
}

/// One tile of [`super::bcast_gemm`] or [`super::conv_gemm`]: raw views, checked by its caller. Row `r`'s
/// `a(r, k)` for `k = s depth + i` (segment `s`, `i < depth`) sits at `a[r] + s a_seg + i aks`,
/// and the row of `b` it multiplies at `b + s b_seg + i bks`.
#[derive(Clone, Copy)]
pub(super) struct Tile {
    pub(super) out: *mut f32,
    pub(super) ors: usize,
    pub(super) a: [*const f32; TILE_ROWS],
    pub(super) aks: usize,
    pub(super) b: *const f32,
    pub(super) bks: usize,
    pub(super) depth: usize,
    pub(super) segs: usize,
    pub(super) a_seg: usize,
    pub(super) b_seg: usize,
}

impl Tile {
    /// `R` rows (at most [`TILE_ROWS`]) by `N` registers of columns.
    ///
    /// # Safety
    /// AVX-512F, and the tile inside its views.
    #[target_feature(enable = "avx512f")]
    unsafe fn run<const R: usize, const N: usize>(&self) {
        let mut acc: [[__m512; N]; R] = [[_mm512_setzero_ps(); N]; R];
        for s in 0..self.segs {
            let a: [*const f32; R] =
                std::array::from_fn(|r| self.a[r].wrapping_add(s * self.a_seg));
            let b = self.b.wrapping_add(s * self.b_seg);
            for k in 0..self.depth {
                let bk = b.wrapping_add(k * self.bks);
                // SAFETY: row k of the tile's b, inside its view (the caller's).
                let bv: [__m512; N] =
                    std::array::from_fn(|j| unsafe { load16(bk.wrapping_add(j * WIDE)) });
                #[allow(clippy::needless_range_loop)]
                for r in 0..R {
                    // SAFETY: a(r, k) of the tile, inside its view.
                    let av = _mm512_set1_ps(unsafe { load1(a[r].wrapping_add(k * self.aks)) });
                    for j in 0..N {
                        acc[r][j] = _mm512_fmadd_ps(av, bv[j], acc[r][j]);
                    }
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                // SAFETY: out(r, 16 j..16 j + 16) of the tile, inside its view.
                unsafe { store16(self.out.wrapping_add(r * self.ors + j * WIDE), *v) };
            }
        }
    }

    /// [`Tile::run`] for `h < TILE_ROWS` rows, one at a time.
    ///
    /// # Safety
    /// As [`Tile::run`].
    #[target_feature(enable = "avx512f")]
    unsafe fn run_rows<const N: usize>(&self, h: usize) {
        for r in 0..h {
            let a = [self.a[r]; TILE_ROWS];
            let row = Tile {
                out: self.out.wrapping_add(r * self.ors),
                a,
                ..*self
            };
            // SAFETY: one row of this tile.
            unsafe { row.run::<1, N>() };
        }
    }
}

/// One float, read as [`load16`] reads sixteen.
#[repr(C, packed)]
struct Unaligned1(f32);

/// The float at `p`.
///
/// # Safety
/// `p` points to a readable float.
#[inline(always)]
unsafe fn load1(p: *const f32) -> f32 {
    // SAFETY: the caller's; a packed struct has alignment 1.
    unsafe { (*p.cast::<Unaligned1>()).0 }
}

/// Sixteen floats at any alignment (see `conv::Unaligned`).
#[repr(C, packed)]
struct Unaligned16(__m512);

/// The 16 floats at `p`.
///
/// # Safety
/// `p` points to 16 readable floats.
#[inline(always)]
unsafe fn load16(p: *const f32) -> __m512 {
    // SAFETY: the caller's; a packed struct has alignment 1.
    unsafe { (*p.cast::<Unaligned16>()).0 }
}

/// Writes `v` to the 16 floats at `p`.
///
/// # Safety
/// `p` points to 16 writable floats.
#[inline(always)]
unsafe fn store16(p: *mut f32, v: __m512) {
    // SAFETY: the caller's; a packed struct has alignment 1.
    unsafe { (*p.cast::<Unaligned16>()).0 = v };
}
