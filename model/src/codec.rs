//! Codecs for model deltas: dense `f32`, int8 with per-block scales, top-k (a fraction of the
//! largest magnitudes) and top-k + int8. Error feedback keeps what compression dropped with the
//! sender and adds it to the next delta (Seide et al. 2014, Stich et al. 2018).
//!
//! Wire format (all integers little-endian):
//!
//! ```text
//! tag: u8 (0 dense, 1 int8, 2 top-k, 3 top-k+int8) | n: u32 (parameter count)
//! dense:      n x f32
//! int8:       block: u32 | per block: scale f32, then up to `block` x i8
//! top-k:      k: u32 | k index gaps as LEB128 varints | k x f32
//! top-k+int8: k: u32 | block: u32 | k index gaps as varints | ceil(k/block) x f32 scales | k x i8
//! ```
//!
//! Index gaps: the first is the first index, each next one is `index - previous` (>= 1), so the
//! indices are strictly increasing by construction. Decoding checks every length, bound, gap and
//! value (finite), consumes exactly the input, and never panics.

use crate::error::{Error, Result, parse_err};

/// Values per int8 block (one `f32` scale each).
pub const INT8_BLOCK: usize = 256;
/// Largest block size a decoder accepts.
const MAX_BLOCK: usize = 1 << 16;

/// How a delta is compressed before it is signed and gossiped.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Compression {
    /// 4 bytes per parameter.
    Dense,
    /// 1 byte per parameter plus one `f32` scale per block of 256.
    Int8,
    /// The given fraction of coordinates with the largest magnitude, as (index, f32).
    TopK(f64),
    /// Top-k with the kept values quantised to int8.
    TopKInt8(f64),
}

impl std::str::FromStr for Compression {
    type Err = Error;
    /// `dense`, `int8`, `topk:FRAC` or `topk:FRAC+int8`.
    fn from_str(s: &str) -> Result<Self> {
        let frac = |f: &str| -> Result<f64> {
            let v: f64 = f
                .parse()
                .map_err(|_| parse_err("compression", s, "expected topk:FRACTION"))?;
            if !(v > 0.0 && v <= 1.0) {
                return Err(parse_err("compression", s, "fraction must be in (0, 1]"));
            }
            Ok(v)
        };
        match s {
            "dense" | "none" => Ok(Self::Dense),
            "int8" => Ok(Self::Int8),
            _ => {
                let rest = s.strip_prefix("topk:").ok_or_else(|| {
                    parse_err(
                        "compression",
                        s,
                        "expected dense, int8, topk:FRAC or topk:FRAC+int8",
                    )
                })?;
                match rest.strip_suffix("+int8") {
                    Some(f) => Ok(Self::TopKInt8(frac(f)?)),
                    None => Ok(Self::TopK(frac(rest)?)),
                }
            }
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dense => write!(f, "dense"),
            Self::Int8 => write!(f, "int8"),
            Self::TopK(k) => write!(f, "topk:{k}"),
            Self::TopKInt8(k) => write!(f, "topk:{k}+int8"),
        }
    }
}

fn k_of(frac: f64, n: usize) -> usize {
    ((frac * n as f64).ceil() as usize).clamp(usize::from(n > 0), n)
}

/// Encodes `delta` (no error feedback).
pub fn encode(c: Compression, delta: &[f32]) -> Vec<u8> {
    let n = delta.len();
    let mut out = Vec::new();
    match c {
        Compression::Dense => {
            out.reserve(5 + 4 * n);
            out.push(0);
            out.extend_from_slice(&(n as u32).to_le_bytes());
            for v in delta {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Compression::Int8 => {
            out.push(1);
            out.extend_from_slice(&(n as u32).to_le_bytes());
            out.extend_from_slice(&(INT8_BLOCK as u32).to_le_bytes());
            for block in delta.chunks(INT8_BLOCK) {
                quantise_block(block, &mut out);
            }
        }
        Compression::TopK(frac) | Compression::TopKInt8(frac) => {
            let idx = top_k_indices(delta, k_of(frac, n));
            let int8 = matches!(c, Compression::TopKInt8(_));
            out.push(if int8 { 3 } else { 2 });
            out.extend_from_slice(&(n as u32).to_le_bytes());
            out.extend_from_slice(&(idx.len() as u32).to_le_bytes());
            if int8 {
                out.extend_from_slice(&(INT8_BLOCK as u32).to_le_bytes());
            }
            let mut prev = 0u32;
            for (j, &i) in idx.iter().enumerate() {
                let i = i as u32;
                write_varint(&mut out, if j == 0 { i } else { i - prev });
                prev = i;
            }
            let vals: Vec<f32> = idx.iter().map(|&i| delta[i]).collect();
            if int8 {
                let mut scales = Vec::new();
                let mut qs = Vec::with_capacity(vals.len());
                for block in vals.chunks(INT8_BLOCK) {
                    let (scale, q) = quantise(block);
                    scales.push(scale);
                    qs.extend(q);
                }
                for s in scales {
                    out.extend_from_slice(&s.to_le_bytes());
                }
                out.extend(qs.iter().map(|&q| q as u8));
            } else {
                for v in vals {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    out
}

/// Encodes `delta + residual` and leaves in `residual` what the encoding lost, so that nothing is
/// dropped for good (error feedback). `residual` is resized to `delta.len()` if needed.
pub fn encode_with_feedback(c: Compression, delta: &[f32], residual: &mut Vec<f32>) -> Vec<u8> {
    residual.resize(delta.len(), 0.0);
    let corrected: Vec<f32> = delta
        .iter()
        .zip(residual.iter())
        .map(|(d, r)| d + r)
        .collect();
    let bytes = encode(c, &corrected);
    // Our own bytes always decode; fall back to keeping everything if they somehow did not.
    match decode(&bytes, delta.len()) {
        Ok(sent) => {
            for ((r, x), s) in residual.iter_mut().zip(&corrected).zip(&sent) {
                *r = x - s;
            }
        }
        Err(_) => residual.copy_from_slice(&corrected),
    }
    bytes
}

/// The `k` indices of largest magnitude, ascending. Ties broken by lower index (deterministic).
fn top_k_indices(x: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    if k < x.len() {
        let cmp = |a: &usize, b: &usize| x[*b].abs().total_cmp(&x[*a].abs()).then(a.cmp(b));
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_unstable();
    idx
}

fn quantise(block: &[f32]) -> (f32, Vec<i8>) {
    let max = block
        .iter()
        .filter(|v| v.is_finite())
        .fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = if max > 0.0 { max / 127.0 } else { 0.0 };
    let q = block
        .iter()
        .map(|v| {
            if scale > 0.0 && v.is_finite() {
                (v / scale).round().clamp(-127.0, 127.0) as i8
            } else {
                0
            }
        })
        .collect();
    (scale, q)
}

fn quantise_block(block: &[f32], out: &mut Vec<u8>) {
    let (scale, q) = quantise(block);
    out.extend_from_slice(&scale.to_le_bytes());
    out.extend(q.iter().map(|&q| q as u8));
}

/// Appends `v` as an unsigned LEB128 varint (the `unsigned-varint` crate's, as in multiformats).
fn write_varint(out: &mut Vec<u8>, v: u32) {
    let mut buf = unsigned_varint::encode::u32_buffer();
    out.extend_from_slice(unsigned_varint::encode::u32(v, &mut buf));
}

/// A bounds-checked reader over untrusted bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                Error::Codec(format!(
                    "truncated: need {n} bytes for {what} at offset {}, have {}",
                    self.pos,
                    self.buf.len() - self.pos
                ))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn f32(&mut self, what: &str) -> Result<f32> {
        let v = f32::from_le_bytes(self.u32(what)?.to_le_bytes());
        if !v.is_finite() {
            return Err(Error::Codec(format!("non-finite {what}")));
        }
        Ok(v)
    }
    /// An index gap: a minimally encoded LEB128 varint of at most 5 bytes holding a `u32`.
    fn varint(&mut self) -> Result<u32> {
        let rest = &self.buf[self.pos..];
        // Decoded as a u64: `decode::u32` drops the bits of a 5th byte above 32 without an error.
        let (v, after) = unsigned_varint::decode::u64(rest)
            .map_err(|e| Error::Codec(format!("index varint at offset {}: {e}", self.pos)))?;
        let len = rest.len() - after.len();
        if len > 5 {
            return Err(Error::Codec("index varint longer than 5 bytes".into()));
        }
        self.pos += len;
        u32::try_from(v).map_err(|_| Error::Codec("index varint overflows".into()))
    }
    fn finish(&self) -> Result<()> {
        if self.pos != self.buf.len() {
            return Err(Error::Codec(format!(
                "{} trailing bytes",
                self.buf.len() - self.pos
            )));
        }
        Ok(())
    }
}

fn read_block(r: &mut Reader<'_>) -> Result<usize> {
    let block = r.u32("block size")? as usize;
    if block == 0 || block > MAX_BLOCK {
        return Err(Error::Codec(format!("bad int8 block size {block}")));
    }
    Ok(block)
}

/// The compression an encoded delta claims, read from its first byte.
pub fn encoding_of(bytes: &[u8]) -> Option<&'static str> {
    match bytes.first()? {
        0 => Some("dense"),
        1 => Some("int8"),
        2 => Some("topk"),
        3 => Some("topk+int8"),
        _ => None,
    }
}

/// Decodes an encoded delta that must hold exactly `expected_len` parameters.
pub fn decode(bytes: &[u8], expected_len: usize) -> Result<Vec<f32>> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let tag = r.u8("tag")?;
    let n = r.u32("length")? as usize;
    if n != expected_len {
        return Err(Error::WrongLength {
            got: n,
            expected: expected_len,
        });
    }
    let out = match tag {
        0 => {
            // Check the size first so a short buffer is rejected before allocating.
            let body = r.take(n.saturating_mul(4), "dense values")?;
            let mut out = Vec::with_capacity(n);
            for c in body.chunks_exact(4) {
                let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                if !v.is_finite() {
                    return Err(Error::Codec("non-finite dense value".into()));
                }
                out.push(v);
            }
            out
        }
        1 => {
            let block = read_block(&mut r)?;
            let blocks = n.div_ceil(block);
            if bytes.len() < blocks.saturating_mul(4).saturating_add(n) {
                return Err(Error::Codec("truncated int8 body".into()));
            }
            let mut out = Vec::with_capacity(n);
            for b in 0..blocks {
                let len = block.min(n - b * block);
                let scale = r.f32("int8 scale")?;
                for &q in r.take(len, "int8 values")? {
                    out.push(f32::from(q as i8) * scale);
                }
            }
            out
        }
        2 | 3 => {
            let k = r.u32("k")? as usize;
            if k > n {
                return Err(Error::Codec(format!("k = {k} exceeds length {n}")));
            }
            let block = if tag == 3 { read_block(&mut r)? } else { 0 };
            // Every index takes at least one byte: bound k by the input before allocating.
            if k > bytes.len() {
                return Err(Error::Codec("truncated top-k indices".into()));
            }
            let mut idx = Vec::with_capacity(k);
            let mut prev: u64 = 0;
            for j in 0..k {
                let gap = u64::from(r.varint()?);
                if j > 0 && gap == 0 {
                    return Err(Error::Codec("repeated index".into()));
                }
                let i = if j == 0 { gap } else { prev + gap };
                if i >= n as u64 {
                    return Err(Error::Codec(format!("index {i} out of range {n}")));
                }
                idx.push(i as usize);
                prev = i;
            }
            let mut out = vec![0.0f32; n];
            if tag == 2 {
                for &i in &idx {
                    out[i] = r.f32("top-k value")?;
                }
            } else {
                let scales: Vec<f32> = (0..k.div_ceil(block))
                    .map(|_| r.f32("int8 scale"))
                    .collect::<Result<_>>()?;
                let qs = r.take(k, "int8 values")?;
                for (j, &i) in idx.iter().enumerate() {
                    out[i] = f32::from(qs[j] as i8) * scales[j / block];
                }
            }
            out
        }
        t => return Err(Error::Codec(format!("unknown encoding tag {t}"))),
    };
    r.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_exact_bytes() {
        let b = encode(Compression::Dense, &[1.0, -2.0]);
        assert_eq!(b, [0, 2, 0, 0, 0, 0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0]);
        assert_eq!(decode(&b, 2).unwrap(), vec![1.0, -2.0]);
        assert!(matches!(
            decode(&b, 3),
            Err(Error::WrongLength {
                got: 2,
                expected: 3
            })
        ));
    }

    #[test]
    fn int8_exact_values() {
        // max |x| = 1.27 -> scale 0.01; 0.5 -> 50, -1.27 -> -127, 0.004 -> 0.
        let x = [0.5, -1.27, 0.004];
        let b = encode(Compression::Int8, &x);
        assert_eq!(b.len(), 1 + 4 + 4 + 4 + 3);
        assert_eq!(&b[13..], &[50u8, (-127i8) as u8, 0]);
        let d = decode(&b, 3).unwrap();
        let scale = 1.27f32 / 127.0;
        assert_eq!(d, vec![50.0 * scale, -127.0 * scale, 0.0]);
    }

    #[test]
    fn topk_exact_indices_and_values() {
        let x = [0.1, -5.0, 0.0, 3.0, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0];
        let b = encode(Compression::TopK(0.2), &x);
        // tag, n=10, k=2, gaps [1, 2], values -5, 3.
        let mut want = vec![2u8, 10, 0, 0, 0, 2, 0, 0, 0, 1, 2];
        want.extend_from_slice(&(-5.0f32).to_le_bytes());
        want.extend_from_slice(&3.0f32.to_le_bytes());
        assert_eq!(b, want);
        assert_eq!(
            decode(&b, 10).unwrap(),
            vec![0.0, -5.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        );
        let b = encode(Compression::TopKInt8(0.2), &x);
        let d = decode(&b, 10).unwrap();
        assert_eq!(d[1], -127.0 * (5.0 / 127.0));
        assert_eq!(d[3], 76.0 * (5.0 / 127.0));
        assert_eq!(d.iter().filter(|v| **v != 0.0).count(), 2);
    }

    #[test]
    fn error_feedback_keeps_the_residual() {
        let x = [1.0, 0.5, 0.25, 0.125];
        let mut res = Vec::new();
        let b = encode_with_feedback(Compression::TopK(0.25), &x, &mut res);
        assert_eq!(decode(&b, 4).unwrap(), vec![1.0, 0.0, 0.0, 0.0]);
        assert_eq!(res, vec![0.0, 0.5, 0.25, 0.125]);
        // Next round the dropped mass comes back: 0.5 + 0.5 = 1.0 is now the largest.
        let b = encode_with_feedback(Compression::TopK(0.25), &[0.0, 0.5, 0.0, 0.0], &mut res);
        assert_eq!(decode(&b, 4).unwrap(), vec![0.0, 1.0, 0.0, 0.0]);
        assert_eq!(res, vec![0.0, 0.0, 0.25, 0.125]);
    }

    #[test]
    fn size_ratios() {
        let n = 100_000;
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 - 500.0).collect();
        let dense = encode(Compression::Dense, &x).len();
        let int8 = encode(Compression::Int8, &x).len();
        let tk = encode(Compression::TopKInt8(0.1), &x).len();
        assert_eq!(dense, 5 + 4 * n);
        assert!(dense as f64 / int8 as f64 > 3.9);
        assert!(dense as f64 / tk as f64 > 10.0, "{dense} / {tk}");
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let good = encode(Compression::TopKInt8(0.5), &[1.0, 2.0, 3.0, 4.0]);
        // Every truncation fails cleanly.
        for cut in 0..good.len() {
            assert!(decode(&good[..cut], 4).is_err(), "cut {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode(&trailing, 4).is_err());
        // Index out of range.
        let bad = [2u8, 2, 0, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0x80, 0x3f];
        assert!(
            decode(&bad, 2)
                .unwrap_err()
                .to_string()
                .contains("out of range")
        );
        // Repeated index.
        let mut bad = vec![2u8, 4, 0, 0, 0, 2, 0, 0, 0, 1, 0];
        bad.extend_from_slice(&[0; 8]);
        assert!(
            decode(&bad, 4)
                .unwrap_err()
                .to_string()
                .contains("repeated")
        );
        // NaN is refused.
        let mut nan = encode(Compression::Dense, &[1.0]);
        nan[5..9].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(decode(&nan, 1).is_err());
        // Huge claimed sizes do not allocate or panic.
        assert!(decode(&[0, 0xff, 0xff, 0xff, 0xff], u32::MAX as usize).is_err());
        assert!(
            decode(
                &[2, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 0x7f],
                0x7fff_ffff
            )
            .is_err()
        );
        assert!(decode(&[9, 0, 0, 0, 0], 0).is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = crate::rng::Rng::seed(99);
        for _ in 0..20_000 {
            let len = rng.below(64);
            let mut b: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            if !b.is_empty() {
                b[0] %= 5;
            }
            if b.len() >= 5 {
                b[1..5].copy_from_slice(&8u32.to_le_bytes());
            }
            let _ = decode(&b, 8);
        }
    }

    #[test]
    fn index_varints_are_minimal_leb128_of_at_most_five_bytes() {
        let cases: [(u32, &[u8]); 5] = [
            (0, &[0]),
            (127, &[0x7f]),
            (128, &[0x80, 1]),
            (300, &[0xac, 0x02]),
            (u32::MAX, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ];
        for (v, bytes) in cases {
            let mut out = Vec::new();
            write_varint(&mut out, v);
            assert_eq!(out, bytes, "{v}");
            let mut r = Reader { buf: bytes, pos: 0 };
            assert_eq!(r.varint().unwrap(), v);
            assert_eq!(r.pos, bytes.len());
        }
        let err = |b: &[u8]| Reader { buf: b, pos: 0 }.varint().unwrap_err().to_string();
        assert!(err(&[0xff, 0xff, 0xff, 0xff, 0x1f]).contains("overflows"));
        assert!(err(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01]).contains("longer than 5 bytes"));
        assert!(err(&[0x80]).contains("not enough input bytes"));
        assert!(err(&[0x80, 0x00]).contains("not minimal"));
    }

    #[test]
    fn parses() {
        assert_eq!(
            "topk:0.1+int8".parse::<Compression>().unwrap(),
            Compression::TopKInt8(0.1)
        );
        assert_eq!(
            "topk:0.01".parse::<Compression>().unwrap(),
            Compression::TopK(0.01)
        );
        assert!("topk:0".parse::<Compression>().is_err());
        assert!("gzip".parse::<Compression>().is_err());
        assert_eq!(Compression::TopKInt8(0.1).to_string(), "topk:0.1+int8");
    }
}
