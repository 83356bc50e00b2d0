//! A decoder-only character transformer (GPT-2 layout, nanoGPT's CPU size by default): token and
//! position embeddings, `layers` pre-norm blocks of causal multi-head self-attention and a 4x GELU
//! MLP, a final layer norm and an output head. Parameter names are the safetensors keys and the
//! canonical parameter order is the names sorted, as for the models of [`crate::net`], so its
//! parameters flatten to one `Vec<f32>` that the network can hash, encode and aggregate.
//!
//! Layer norms and the attention softmax run through [`crate::fused`] (one pass each way, same
//! values as candle's differentiable compositions): `candle_nn::LayerNorm`'s fused kernel and
//! `softmax_last_dim` have no backward pass, so gradients would silently stop there.

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{Embedding, Linear, VarBuilder, VarMap};

use crate::error::{Error, Result, parse_err};
use crate::net::ParamSpec;
use crate::rng::Rng;

/// The shape of a transformer. The vocabulary size comes from the data's [`crate::text::Vocab`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerConfig {
    /// Number of blocks.
    pub layers: usize,
    /// Attention heads per block; divides `dim`.
    pub heads: usize,
    /// Width of the residual stream.
    pub dim: usize,
    /// Longest input, in tokens (the position embedding's size).
    pub context: usize,
}

impl Default for TransformerConfig {
    /// nanoGPT's CPU configuration for Shakespeare characters: 4 layers, 4 heads, 128 wide,
    /// context 64.
    fn default() -> Self {
        TransformerConfig {
            layers: 4,
            heads: 4,
            dim: 128,
            context: 64,
        }
    }
}

/// Largest accepted sizes (a declaration from a file or a peer must not ask for terabytes).
const MAX_LAYERS: usize = 64;
const MAX_DIM: usize = 4096;
const MAX_CONTEXT: usize = 8192;

impl TransformerConfig {
    /// Checks that every size is positive, bounded, and that heads divide the width.
    pub fn validate(&self) -> Result<()> {
        let why = if self.layers == 0 || self.layers > MAX_LAYERS {
            format!("layers must be in 1..={MAX_LAYERS}")
        } else if self.dim == 0 || self.dim > MAX_DIM {
            format!("dim must be in 1..={MAX_DIM}")
        } else if self.context == 0 || self.context > MAX_CONTEXT {
            format!("context must be in 1..={MAX_CONTEXT}")
        } else if self.heads == 0 || !self.dim.is_multiple_of(self.heads) {
            format!("heads ({}) must divide dim ({})", self.heads, self.dim)
        } else {
            return Ok(());
        };
        Err(parse_err("transformer", &self.to_string(), why))
    }

    /// Every parameter for a vocabulary of `vocab` characters, sorted by name.
    pub fn layout(&self, vocab: usize) -> Vec<ParamSpec> {
        let c = self.dim;
        let spec = |name: String, shape: Vec<usize>, fan_in: usize| ParamSpec {
            name,
            shape,
            fan_in,
        };
        let linear = |name: &str, inp: usize, out: usize| {
            [
                spec(format!("{name}.bias"), vec![out], inp),
                spec(format!("{name}.weight"), vec![out, inp], inp),
            ]
        };
        let norm = |name: &str| {
            [
                spec(format!("{name}.bias"), vec![c], c),
                spec(format!("{name}.weight"), vec![c], c),
            ]
        };
        let mut v = vec![
            spec("tok_emb.weight".into(), vec![vocab, c], c),
            spec("pos_emb.weight".into(), vec![self.context, c], c),
        ];
        for i in 0..self.layers {
            let p = format!("blocks.{i}");
            v.extend(norm(&format!("{p}.ln1")));
            v.extend(linear(&format!("{p}.attn.qkv"), c, 3 * c));
            v.extend(linear(&format!("{p}.attn.proj"), c, c));
            v.extend(norm(&format!("{p}.ln2")));
            v.extend(linear(&format!("{p}.mlp.fc"), c, 4 * c));
            v.extend(linear(&format!("{p}.mlp.proj"), 4 * c, c));
        }
        v.extend(norm("ln_f"));
        v.extend(linear("head", c, vocab));
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Total number of parameters for `vocab` characters.
    pub fn num_params(&self, vocab: usize) -> usize {
        self.layout(vocab).iter().map(ParamSpec::numel).sum()
    }

    /// GPT-2's initialisation, from this crate's PRNG in canonical order (so the genesis seed
    /// fixes the bits): weights and embeddings normal with std 0.02, the two projections back into
    /// the residual stream 0.02 / sqrt(2 layers), biases 0, layer-norm gains 1.
    pub fn init(&self, vocab: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::derive(seed, 0x7F0A);
        let residual_std = 0.02 / ((2 * self.layers) as f64).sqrt();
        let mut out = Vec::with_capacity(self.num_params(vocab));
        for spec in self.layout(vocab) {
            let n = spec.numel();
            let is_norm = spec.name.contains(".ln") || spec.name.starts_with("ln_f");
            if spec.name.ends_with(".bias") {
                out.extend(std::iter::repeat_n(0.0, n));
            } else if is_norm {
                out.extend(std::iter::repeat_n(1.0, n));
            } else {
                let std = if spec.name.ends_with("proj.weight") {
                    residual_std
                } else {
                    0.02
                };
                out.extend((0..n).map(|_| (rng.normal() * std) as f32));
            }
        }
        out
    }
}

impl std::str::FromStr for TransformerConfig {
    type Err = Error;
    /// `transformer` (the defaults) or `transformer:layers=L,heads=H,dim=C,context=T`, any subset
    /// of the keys, in any order.
    fn from_str(s: &str) -> Result<Self> {
        let (name, args) = s.split_once(':').unwrap_or((s, ""));
        if name != "transformer" {
            return Err(parse_err(
                "model",
                s,
                "expected transformer[:key=value,...]",
            ));
        }
        let mut cfg = TransformerConfig::default();
        for kv in args.split(',').filter(|x| !x.trim().is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| parse_err("model", s, format!("'{kv}' is not key=value")))?;
            let v: usize = v
                .trim()
                .parse()
                .map_err(|_| parse_err("model", s, format!("'{v}' is not a count")))?;
            match k.trim() {
                "layers" => cfg.layers = v,
                "heads" => cfg.heads = v,
                "dim" => cfg.dim = v,
                "context" => cfg.context = v,
                other => {
                    return Err(parse_err(
                        "model",
                        s,
                        format!("unknown key '{other}' (layers, heads, dim, context)"),
                    ));
                }
            }
        }
        cfg.validate()
            .map_err(|e| parse_err("model", s, e.to_string()))?;
        Ok(cfg)
    }
}

impl std::fmt::Display for TransformerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "transformer:layers={},heads={},dim={},context={}",
            self.layers, self.heads, self.dim, self.context
        )
    }
}

/// Layer norm with learned gain and bias over the last dimension, differentiable.
struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        Ok(Norm {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(crate::fused::layer_norm(x, &self.weight, &self.bias, 1e-5)?)
    }
}

/// One pre-norm block: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
struct Block {
    ln1: Norm,
    qkv: Linear,
    proj: Linear,
    ln2: Norm,
    fc: Linear,
    fc_proj: Linear,
}

impl Block {
    fn new(vb: VarBuilder, c: usize) -> Result<Self> {
        Ok(Block {
            ln1: Norm::new(vb.pp("ln1"), c)?,
            qkv: candle_nn::linear(c, 3 * c, vb.pp("attn").pp("qkv"))?,
            proj: candle_nn::linear(c, c, vb.pp("attn").pp("proj"))?,
            ln2: Norm::new(vb.pp("ln2"), c)?,
            fc: candle_nn::linear(c, 4 * c, vb.pp("mlp").pp("fc"))?,
            fc_proj: candle_nn::linear(4 * c, c, vb.pp("mlp").pp("proj"))?,
        })
    }

    /// `x` is `[batch, time, dim]`; `mask` is `[time, time]`, 0 where a position may attend and a
    /// large negative number where it may not (the future).
    fn forward(&self, x: &Tensor, mask: &Tensor, heads: usize) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let hd = c / heads;
        let qkv = self
            .qkv
            .forward(&self.ln1.forward(x)?)?
            .reshape((b, t, 3, heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let att = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        let att = crate::fused::softmax_last_dim(&att.broadcast_add(mask)?)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, c))?;
        let x = (x + self.proj.forward(&y)?)?;
        let h = crate::gelu::gelu(&self.fc.forward(&self.ln2.forward(&x)?)?)?;
        Ok((&x + self.fc_proj.forward(&h)?)?)
    }
}

/// A character transformer with its trainable variables.
pub struct Transformer {
    cfg: TransformerConfig,
    vocab: usize,
    varmap: VarMap,
    /// Variables in canonical (sorted-name) order.
    vars: Vec<Var>,
    tok_emb: Embedding,
    pos_emb: Embedding,
    blocks: Vec<Block>,
    ln_f: Norm,
    head: Linear,
    /// `[context, context]`: 0 on and below the diagonal, -1e9 above (no attending to the future).
    mask: Tensor,
}

impl Transformer {
    /// Builds the model holding `flat` (canonical order) for `vocab` characters.
    pub fn new(
        cfg: TransformerConfig,
        vocab: usize,
        flat: &[f32],
        device: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        let (varmap, vars) = crate::params::vars_from_flat(&cfg.layout(vocab), flat, device)?;
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let c = cfg.dim;
        let blocks = (0..cfg.layers)
            .map(|i| Block::new(vb.pp(format!("blocks.{i}")), c))
            .collect::<Result<Vec<_>>>()?;
        let t = cfg.context;
        let mask: Vec<f32> = (0..t * t)
            .map(|i| if i % t > i / t { -1e9 } else { 0.0 })
            .collect();
        Ok(Transformer {
            cfg,
            vocab,
            tok_emb: candle_nn::embedding(vocab, c, vb.pp("tok_emb"))?,
            pos_emb: candle_nn::embedding(t, c, vb.pp("pos_emb"))?,
            blocks,
            ln_f: Norm::new(vb.pp("ln_f"), c)?,
            head: candle_nn::linear(c, vocab, vb.pp("head"))?,
            mask: Tensor::from_vec(mask, (t, t), device)?,
            varmap,
            vars,
        })
    }

    /// The shape.
    pub fn config(&self) -> TransformerConfig {
        self.cfg
    }

    /// Vocabulary size (input and output width).
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// The candle variable map (names are the safetensors keys).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// Variables in canonical order.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// The parameters as one flat vector in canonical order.
    pub fn flat(&self) -> Result<Vec<f32>> {
        crate::params::flat_of_vars(&self.vars)
    }

    /// Overwrites every parameter from a flat vector in canonical order.
    pub fn set_flat(&self, flat: &[f32]) -> Result<()> {
        crate::params::set_vars_from_flat(&self.vars, flat)
    }

    /// Logits `[batch, time, vocab]` for token ids `[batch, time]` (u32), time <= context. The
    /// logits at position `i` depend only on tokens `0..=i`.
    pub fn forward(&self, idx: &Tensor) -> Result<Tensor> {
        let (_, t) = idx.dims2()?;
        if t == 0 || t > self.cfg.context {
            return Err(Error::Dataset(format!(
                "input of {t} tokens; the model takes 1..={}",
                self.cfg.context
            )));
        }
        let pos = Tensor::arange(0u32, t as u32, idx.device())?;
        let mut x = self
            .tok_emb
            .forward(idx)?
            .broadcast_add(&self.pos_emb.forward(&pos)?)?;
        let mask = self.mask.narrow(0, 0, t)?.narrow(1, 0, t)?;
        for b in &self.blocks {
            x = b.forward(&x, &mask, self.cfg.heads)?;
        }
        Ok(self.head.forward(&self.ln_f.forward(&x)?)?)
    }

    /// Mean next-token cross-entropy (nats) of `[batch, time]` inputs against `[batch, time]`
    /// targets (u32), and the logits it came from.
    pub fn loss(&self, xs: &Tensor, ys: &Tensor) -> Result<(Tensor, Tensor)> {
        let logits = self.forward(xs)?;
        let (b, t, v) = logits.dims3()?;
        let loss =
            candle_nn::loss::cross_entropy(&logits.reshape((b * t, v))?, &ys.reshape(b * t)?)?;
        Ok((loss, logits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> TransformerConfig {
        TransformerConfig {
            layers: 2,
            heads: 2,
            dim: 16,
            context: 8,
        }
    }

    #[test]
    fn config_parses_prints_and_validates() {
        let c: TransformerConfig = "transformer:layers=2,heads=2,dim=16,context=8"
            .parse()
            .unwrap();
        assert_eq!(c, tiny());
        assert_eq!(c.to_string().parse::<TransformerConfig>().unwrap(), c);
        assert_eq!(
            "transformer".parse::<TransformerConfig>().unwrap(),
            TransformerConfig::default()
        );
        for bad in [
            "transformer:heads=3",
            "transformer:layers=0",
            "transformer:dim=x",
            "transformer:width=4",
            "cnn",
        ] {
            assert!(bad.parse::<TransformerConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn layout_names_and_counts() {
        let c = TransformerConfig::default();
        // Per block: 2 norms (4 x 128), qkv 3*128*128 + 384, proj 128*128 + 128,
        // fc 512*128 + 512, proj 128*512 + 128 = 198,272. Embeddings 65*128 + 64*128, final
        // norm 256, head 65*128 + 65.
        assert_eq!(
            c.num_params(65),
            4 * 198_272 + 65 * 128 + 64 * 128 + 256 + 65 * 128 + 65
        );
        let names: Vec<String> = tiny().layout(5).into_iter().map(|s| s.name).collect();
        assert_eq!(names.len(), 2 * 12 + 6);
        assert_eq!(names[0], "blocks.0.attn.proj.bias");
        assert_eq!(names.last().unwrap(), "tok_emb.weight");
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }

    #[test]
    fn flat_round_trip_and_shapes() {
        let dev = Device::Cpu;
        let p = tiny().init(5, 1);
        assert_eq!(p, tiny().init(5, 1));
        assert_ne!(p, tiny().init(5, 2));
        let m = Transformer::new(tiny(), 5, &p, &dev).unwrap();
        assert_eq!(m.flat().unwrap(), p);
        let xs = Tensor::new(&[[0u32, 1, 2], [4, 3, 2]], &dev).unwrap();
        assert_eq!(m.forward(&xs).unwrap().dims(), &[2, 3, 5]);
        let long = Tensor::zeros((1, 9), DType::U32, &dev).unwrap();
        assert!(m.forward(&long).is_err());
        let q = tiny().init(5, 3);
        m.set_flat(&q).unwrap();
        assert_eq!(m.flat().unwrap(), q);
        assert!(m.set_flat(&q[1..]).is_err());
        assert!(Transformer::new(tiny(), 5, &q[1..], &dev).is_err());
    }

    #[test]
    fn a_later_token_never_changes_earlier_logits() {
        let dev = Device::Cpu;
        let m = Transformer::new(tiny(), 6, &tiny().init(6, 7), &dev).unwrap();
        let a = Tensor::new(&[[1u32, 2, 3, 4, 5, 0, 1, 2]], &dev).unwrap();
        let b = Tensor::new(&[[1u32, 2, 3, 4, 5, 3, 3, 3]], &dev).unwrap();
        let la = m.forward(&a).unwrap().squeeze(0).unwrap();
        let lb = m.forward(&b).unwrap().squeeze(0).unwrap();
        let first = |l: &Tensor, n| l.narrow(0, 0, n).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(first(&la, 5), first(&lb, 5));
        // Position 5 sees the changed token: its logits differ.
        let at = |l: &Tensor| l.get(5).unwrap().to_vec1::<f32>().unwrap();
        assert_ne!(at(&la), at(&lb));
        // A shorter input gives the same logits on its positions.
        let short = Tensor::new(&[[1u32, 2, 3]], &dev).unwrap();
        let ls = m.forward(&short).unwrap().squeeze(0).unwrap();
        let (x, y) = (first(&ls, 3), first(&la, 3));
        for (r, s) in x.iter().zip(&y) {
            for (u, v) in r.iter().zip(s) {
                assert!((u - v).abs() < 1e-5, "{u} vs {v}");
            }
        }
    }
}
