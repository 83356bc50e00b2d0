//! Flat parameter vectors: the canonical `f32` vector in sorted-name order, its SHA-256 hash over
//! little-endian bytes, and safetensors files.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::net::{ModelSpec, ParamSpec};

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

/// Candle variables holding `flat` (canonical order) under the names of `layout`, registered in
/// a fresh [`VarMap`]; the variables come back in layout order. Shared by every model type that
/// is built from a flat parameter vector.
pub fn vars_from_flat(
    layout: &[ParamSpec],
    flat: &[f32],
    device: &Device,
) -> Result<(VarMap, Vec<Var>)> {
    let expected: usize = layout.iter().map(ParamSpec::numel).sum();
    if flat.len() != expected {
        return Err(Error::WrongLength {
            got: flat.len(),
            expected,
        });
    }
    let varmap = VarMap::new();
    let mut vars = Vec::with_capacity(layout.len());
    {
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| Error::Checkpoint("variable map lock poisoned".into()))?;
        let mut off = 0;
        for p in layout {
            let n = p.numel();
            let t = Tensor::from_slice(&flat[off..off + n], p.shape.as_slice(), device)?;
            let var = Var::from_tensor(&t)?;
            data.insert(p.name.clone(), var.clone());
            vars.push(var);
            off += n;
        }
    }
    Ok((varmap, vars))
}

/// The flat vector of `vars`, in their order.
pub fn flat_of_vars(vars: &[Var]) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(vars.iter().map(|v| v.elem_count()).sum());
    for v in vars {
        out.extend(v.as_tensor().flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// Overwrites `vars` (in their order) from `flat`, which must hold exactly their elements.
pub fn set_vars_from_flat(vars: &[Var], flat: &[f32]) -> Result<()> {
    let expected: usize = vars.iter().map(|v| v.elem_count()).sum();
    if flat.len() != expected {
        return Err(Error::WrongLength {
            got: flat.len(),
            expected,
        });
    }
    let mut off = 0;
    for v in vars {
        let n = v.elem_count();
        v.set(&Tensor::from_slice(
            &flat[off..off + n],
            v.shape(),
            v.device(),
        )?)?;
        off += n;
    }
    Ok(())
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

/// Writes `flat` as a safetensors file (loadable by PyTorch's `safetensors.torch.load_file` and
/// numpy's `safetensors.numpy.load_file`).
pub fn save_safetensors(kind: &ModelSpec, flat: &[f32], path: &Path) -> Result<()> {
    let bytes = to_safetensors_bytes(kind, flat)?;
    std::fs::write(path, bytes).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Serialises `flat` to safetensors bytes with the `safetensors` crate. The bytes are canonical
/// (tensors in sorted-name order, no metadata, the crate's compact JSON header padded with spaces
/// to 8 bytes), so two nodes holding the same parameters produce the same file and a checkpoint
/// can be addressed by its digest.
pub fn to_safetensors_bytes(kind: &ModelSpec, flat: &[f32]) -> Result<Vec<u8>> {
    let expected = kind.num_params();
    if flat.len() != expected {
        return Err(Error::WrongLength {
            got: flat.len(),
            expected,
        });
    }
    let data: Vec<u8> = flat.iter().flat_map(|v| v.to_le_bytes()).collect();
    let layout = kind.layout();
    let mut views = Vec::with_capacity(layout.len());
    let mut off = 0usize;
    for spec in &layout {
        let end = off + spec.numel() * 4;
        let view = TensorView::new(Dtype::F32, spec.shape.clone(), &data[off..end])
            .map_err(|e| Error::Checkpoint(format!("tensor {}: {e}", spec.name)))?;
        views.push((spec.name.as_str(), view));
        off = end;
    }
    // `serialize` orders the tensors by dtype alignment (all F32 here), then by name: the
    // canonical order.
    safetensors::serialize(views, None)
        .map_err(|e| Error::Checkpoint(format!("writing safetensors: {e}")))
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

/// Parses safetensors bytes (possibly from a peer) into the flat vector of `kind`: every tensor
/// of the model present as `F32` with its shape, no other tensor. The `safetensors` crate checks
/// the header (size, JSON, offsets inside the buffer and matching each dtype and shape).
pub fn from_safetensors_bytes(kind: &ModelSpec, bytes: &[u8]) -> Result<Vec<f32>> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::Checkpoint(format!("not a valid safetensors file: {e}")))?;
    let layout = kind.layout();
    let mut extra: Vec<&str> = file
        .names()
        .into_iter()
        .filter(|n| !layout.iter().any(|s| s.name == *n))
        .collect();
    if !extra.is_empty() {
        extra.sort_unstable();
        return Err(Error::Checkpoint(format!(
            "unexpected tensors for model {kind}: {extra:?}"
        )));
    }
    let mut out = Vec::with_capacity(kind.num_params());
    for spec in &layout {
        let t = file
            .tensor(&spec.name)
            .map_err(|_| Error::Checkpoint(format!("missing tensor {}", spec.name)))?;
        if t.shape() != spec.shape.as_slice() {
            return Err(Error::Checkpoint(format!(
                "tensor {} has shape {:?}, expected {:?}",
                spec.name,
                t.shape(),
                spec.shape
            )));
        }
        if t.dtype() != Dtype::F32 {
            return Err(Error::Checkpoint(format!(
                "tensor {} is {:?}, expected F32",
                spec.name,
                t.dtype()
            )));
        }
        out.extend(
            t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
    }
    Ok(out)
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
            hex::encode(hash_params(&[])),
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
        // candle's own reader reads back the same tensors from our bytes.
        let t = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu).unwrap();
        assert_eq!(t["fc2.bias"].dims(), &[10]);
        // Wrong model: names differ.
        assert!(load_safetensors(&ModelSpec::mlp(), &path).is_err());
        // Truncated bytes: an error, not a panic.
        assert!(from_safetensors_bytes(kind, &bytes[..bytes.len() / 2]).is_err());
        assert!(from_safetensors_bytes(kind, b"garbage").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The bytes on disk are those the hand-written writer produced before the `safetensors`
    /// crate: 8-byte little-endian header length, compact JSON in sorted-name order padded with
    /// spaces to a multiple of 8, then the tensors' little-endian `f32`s in that order.
    #[test]
    fn safetensors_bytes_keep_their_exact_layout() {
        let kind = &ModelSpec::digits_mlp();
        let p = kind.init(3);
        let json = concat!(
            r#"{"fc1.bias":{"dtype":"F32","shape":[64],"data_offsets":[0,256]},"#,
            r#""fc1.weight":{"dtype":"F32","shape":[64,64],"data_offsets":[256,16640]},"#,
            r#""fc2.bias":{"dtype":"F32","shape":[10],"data_offsets":[16640,16680]},"#,
            r#""fc2.weight":{"dtype":"F32","shape":[10,64],"data_offsets":[16680,19240]}}"#
        );
        assert_eq!(json.len(), 279);
        let mut want = 280u64.to_le_bytes().to_vec();
        want.extend_from_slice(json.as_bytes());
        want.push(b' ');
        for v in &p {
            want.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(to_safetensors_bytes(kind, &p).unwrap(), want);
    }

    #[test]
    fn safetensors_with_a_wrong_dtype_shape_or_extra_tensor_are_refused() {
        let kind = &ModelSpec::digits_mlp();
        let p = kind.init(3);
        let layout = kind.layout();
        let data: Vec<u8> = p.iter().flat_map(|v| v.to_le_bytes()).collect();
        // Builds a file from the model's tensors, letting `edit` change each (name, view).
        let file = |edit: &dyn for<'a> Fn(&str, TensorView<'a>) -> (String, TensorView<'a>)| {
            let mut off = 0;
            let mut views = Vec::new();
            for spec in &layout {
                let end = off + spec.numel() * 4;
                let v = TensorView::new(Dtype::F32, spec.shape.clone(), &data[off..end]).unwrap();
                views.push(edit(&spec.name, v));
                off = end;
            }
            safetensors::serialize(views, None).unwrap()
        };
        let same = file(&|n, v| (n.to_string(), v));
        assert_eq!(from_safetensors_bytes(kind, &same).unwrap(), p);
        let err = |bytes: &[u8]| from_safetensors_bytes(kind, bytes).unwrap_err().to_string();

        let renamed = file(&|n, v| (n.replace("fc2.bias", "fc3.bias"), v));
        assert!(err(&renamed).contains(r#"unexpected tensors for model digits-mlp: ["fc3.bias"]"#));
        let as_i32 = file(&|n, v| {
            let dtype = if n == "fc1.bias" {
                Dtype::I32
            } else {
                Dtype::F32
            };
            let view = TensorView::new(dtype, v.shape().to_vec(), v.data()).unwrap();
            (n.to_string(), view)
        });
        assert!(err(&as_i32).contains("tensor fc1.bias is I32, expected F32"));
        let reshaped = file(&|n, v| {
            let shape = if n == "fc1.weight" {
                vec![32, 128]
            } else {
                v.shape().to_vec()
            };
            (
                n.to_string(),
                TensorView::new(Dtype::F32, shape, v.data()).unwrap(),
            )
        });
        assert!(
            err(&reshaped).contains("tensor fc1.weight has shape [32, 128], expected [64, 64]")
        );
        // A header that points past the data.
        let mut lying = same.clone();
        lying.truncate(lying.len() - 4);
        assert!(err(&lying).contains("not a valid safetensors file"));
    }
}
