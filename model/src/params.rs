//! Flat parameter vectors: the canonical `f32` vector in sorted-name order, its SHA-256 hash over
//! little-endian bytes, and safetensors files.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::net::ModelSpec;

/// A 32-byte SHA-256 digest.
pub type Hash = [u8; 32];

/// SHA-256 over the little-endian bytes of `params`, in order. This is the model hash the
/// consensus commits to, so it must never depend on the platform.
pub fn hash_params(params: &[f32]) -> Hash {
    let mut h = Sha256::new();
    // Feed in chunks to avoid allocating a second copy of a large vector.
    let mut buf = [0u8; 4096];
    for chunk in params.chunks(1024) {
        for (i, v) in chunk.iter().enumerate() {
            buf[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        h.update(&buf[..chunk.len() * 4]);
    }
    h.finalize().into()
}

/// Lower-case hex of a hash (for logs and files).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The flat vector of `kind` from named tensors, checking that every name is present with the
/// right shape and that no unknown name is there.
pub fn flatten_named(kind: &ModelSpec, tensors: &HashMap<String, Tensor>) -> Result<Vec<f32>> {
    let layout = kind.layout();
    if tensors.len() != layout.len() {
        let mut extra: Vec<&String> = tensors
            .keys()
            .filter(|k| !layout.iter().any(|s| &s.name == *k))
            .collect();
        extra.sort();
        if !extra.is_empty() {
            return Err(Error::Checkpoint(format!(
                "unexpected tensors for model {kind}: {extra:?}"
            )));
        }
    }
    let mut out = Vec::with_capacity(kind.num_params());
    for spec in &layout {
        let t = tensors
            .get(&spec.name)
            .ok_or_else(|| Error::Checkpoint(format!("missing tensor {}", spec.name)))?;
        if t.dims() != spec.shape.as_slice() {
            return Err(Error::Checkpoint(format!(
                "tensor {} has shape {:?}, expected {:?}",
                spec.name,
                t.dims(),
                spec.shape
            )));
        }
        out.extend(
            t.to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
    }
    Ok(out)
}

/// Writes `flat` as a safetensors file (loadable by PyTorch's `safetensors.torch.load_file`).
pub fn save_safetensors(kind: &ModelSpec, flat: &[f32], path: &Path) -> Result<()> {
    let bytes = to_safetensors_bytes(kind, flat)?;
    std::fs::write(path, bytes).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Serialises `flat` to safetensors bytes. The bytes are canonical (tensors in sorted-name order,
/// no metadata, fixed JSON layout), so two nodes holding the same parameters produce the same file
/// and a checkpoint can be addressed by its digest.
pub fn to_safetensors_bytes(kind: &ModelSpec, flat: &[f32]) -> Result<Vec<u8>> {
    let expected = kind.num_params();
    if flat.len() != expected {
        return Err(Error::WrongLength {
            got: flat.len(),
            expected,
        });
    }
    let mut header = String::from("{");
    let mut off = 0usize;
    for (i, spec) in kind.layout().iter().enumerate() {
        let end = off + spec.numel() * 4;
        let shape: Vec<String> = spec.shape.iter().map(|d| d.to_string()).collect();
        if i > 0 {
            header.push(',');
        }
        header.push_str(&format!(
            "\"{}\":{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{off},{end}]}}",
            spec.name,
            shape.join(",")
        ));
        off = end;
    }
    header.push('}');
    // The format asks for the data to start 8-byte aligned; pad the header with spaces.
    while (header.len() + 8) % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + flat.len() * 4);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in flat {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Reads a safetensors file into the flat vector of `kind` (names and shapes checked).
pub fn load_safetensors(kind: &ModelSpec, path: &Path) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    from_safetensors_bytes(kind, &bytes)
        .map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))
}

/// Parses safetensors bytes (possibly from a peer) into the flat vector of `kind`.
pub fn from_safetensors_bytes(kind: &ModelSpec, bytes: &[u8]) -> Result<Vec<f32>> {
    let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?;
    flatten_named(kind, &tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_over_little_endian_bytes() {
        // SHA-256 of the 8 bytes 00 00 80 3f 00 00 00 40 (1.0f32, 2.0f32 little-endian).
        let mut h = Sha256::new();
        h.update([0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x40]);
        let want: Hash = h.finalize().into();
        assert_eq!(hash_params(&[1.0, 2.0]), want);
        assert_eq!(
            hex(&hash_params(&[])),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // Chunking does not change the result.
        let big: Vec<f32> = (0..5000).map(|i| i as f32).collect();
        let mut h = Sha256::new();
        for v in &big {
            h.update(v.to_le_bytes());
        }
        let want: Hash = h.finalize().into();
        assert_eq!(hash_params(&big), want);
    }

    #[test]
    fn safetensors_round_trip_and_checks() {
        let kind = &ModelSpec::digits_mlp();
        let p = kind.init(3);
        let dir = std::env::temp_dir().join(format!("cohort-params-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.safetensors");
        save_safetensors(kind, &p, &path).unwrap();
        assert_eq!(load_safetensors(kind, &path).unwrap(), p);
        let bytes = to_safetensors_bytes(kind, &p).unwrap();
        assert_eq!(from_safetensors_bytes(kind, &bytes).unwrap(), p);
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        // candle's own writer reads back the same tensors from our bytes.
        let t = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
        assert_eq!(t["fc2.bias"].dims(), &[10]);
        // Wrong model: names differ.
        assert!(load_safetensors(&ModelSpec::mlp(), &path).is_err());
        // Truncated bytes: an error, not a panic.
        assert!(from_safetensors_bytes(kind, &bytes[..bytes.len() / 2]).is_err());
        assert!(from_safetensors_bytes(kind, b"garbage").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
