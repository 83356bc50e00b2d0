//! The models, in candle-nn. Parameter names (`fc1.weight`, ...) are the safetensors keys, and the
//! canonical parameter order everywhere in Cohort is these names sorted.

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{Conv2d, Conv2dConfig, Linear, VarBuilder, VarMap};

use crate::error::{Error, Result, parse_err};
use crate::rng::Rng;

/// Which network to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// McMahan et al.'s "2NN": 784-200-200-10 with ReLU, 199,210 parameters.
    Mlp,
    /// McMahan et al.'s CNN: conv5x5(32)-maxpool-conv5x5(64)-maxpool-fc512-fc10, 1,663,370 parameters.
    Cnn,
    /// A small 64-64-10 MLP for the 8x8 digits, 4,810 parameters.
    DigitsMlp,
}

impl std::str::FromStr for ModelKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mlp" | "2nn" => Ok(Self::Mlp),
            "cnn" => Ok(Self::Cnn),
            "digits-mlp" | "digits" => Ok(Self::DigitsMlp),
            _ => Err(parse_err("model", s, "expected mlp, cnn or digits-mlp")),
        }
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Mlp => "mlp",
            Self::Cnn => "cnn",
            Self::DigitsMlp => "digits-mlp",
        })
    }
}

/// One named parameter tensor in the canonical layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    /// The safetensors key, e.g. `fc1.weight`.
    pub name: String,
    /// The tensor shape.
    pub shape: Vec<usize>,
    /// Fan-in used for the default initialisation bound 1/sqrt(fan_in).
    pub fan_in: usize,
}

impl ParamSpec {
    /// Number of scalars in this tensor.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

fn linear_specs(name: &str, inp: usize, out: usize) -> [ParamSpec; 2] {
    [
        ParamSpec {
            name: format!("{name}.bias"),
            shape: vec![out],
            fan_in: inp,
        },
        ParamSpec {
            name: format!("{name}.weight"),
            shape: vec![out, inp],
            fan_in: inp,
        },
    ]
}

fn conv_specs(name: &str, cin: usize, cout: usize, k: usize) -> [ParamSpec; 2] {
    [
        ParamSpec {
            name: format!("{name}.bias"),
            shape: vec![cout],
            fan_in: cin * k * k,
        },
        ParamSpec {
            name: format!("{name}.weight"),
            shape: vec![cout, cin, k, k],
            fan_in: cin * k * k,
        },
    ]
}

impl ModelKind {
    /// Number of input features the model expects per sample.
    pub fn input_features(self) -> usize {
        match self {
            Self::Mlp | Self::Cnn => 784,
            Self::DigitsMlp => 64,
        }
    }

    /// The canonical layout: every parameter, sorted by name.
    pub fn layout(self) -> Vec<ParamSpec> {
        let mut v: Vec<ParamSpec> = match self {
            Self::Mlp => [
                linear_specs("fc1", 784, 200),
                linear_specs("fc2", 200, 200),
                linear_specs("fc3", 200, 10),
            ]
            .concat(),
            Self::Cnn => [
                conv_specs("conv1", 1, 32, 5),
                conv_specs("conv2", 32, 64, 5),
                linear_specs("fc1", 7 * 7 * 64, 512),
                linear_specs("fc2", 512, 10),
            ]
            .concat(),
            Self::DigitsMlp => [linear_specs("fc1", 64, 64), linear_specs("fc2", 64, 10)].concat(),
        };
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Total number of parameters.
    pub fn num_params(self) -> usize {
        self.layout().iter().map(ParamSpec::numel).sum()
    }

    /// The initial parameters for `seed`: every tensor uniform in +-1/sqrt(fan_in) (PyTorch's default
    /// for `Linear` and `Conv2d`), drawn from this crate's own PRNG in canonical order so that every
    /// node derives the same bits from the genesis seed.
    pub fn init(self, seed: u64) -> Vec<f32> {
        let mut rng = Rng::derive(seed, 0x1417);
        let mut out = Vec::with_capacity(self.num_params());
        for spec in self.layout() {
            let bound = 1.0 / (spec.fan_in as f64).sqrt();
            for _ in 0..spec.numel() {
                out.push(rng.uniform(-bound, bound) as f32);
            }
        }
        out
    }
}

/// A network with its trainable variables.
pub struct Model {
    kind: ModelKind,
    varmap: VarMap,
    /// Variables in canonical (sorted-name) order.
    vars: Vec<Var>,
    net: Net,
}

enum Net {
    Mlp {
        fc1: Linear,
        fc2: Linear,
        fc3: Linear,
    },
    Cnn {
        conv1: Conv2d,
        conv2: Conv2d,
        fc1: Linear,
        fc2: Linear,
    },
    Digits {
        fc1: Linear,
        fc2: Linear,
    },
}

impl Model {
    /// Builds `kind` holding the flat parameters `flat` (canonical order).
    pub fn new(kind: ModelKind, flat: &[f32], device: &Device) -> Result<Self> {
        let layout = kind.layout();
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
            for spec in &layout {
                let n = spec.numel();
                let t = Tensor::from_slice(&flat[off..off + n], spec.shape.as_slice(), device)?;
                let var = Var::from_tensor(&t)?;
                data.insert(spec.name.clone(), var.clone());
                vars.push(var);
                off += n;
            }
        }
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let net = match kind {
            ModelKind::Mlp => Net::Mlp {
                fc1: candle_nn::linear(784, 200, vb.pp("fc1"))?,
                fc2: candle_nn::linear(200, 200, vb.pp("fc2"))?,
                fc3: candle_nn::linear(200, 10, vb.pp("fc3"))?,
            },
            ModelKind::Cnn => {
                let cfg = Conv2dConfig {
                    padding: 2,
                    ..Default::default()
                };
                Net::Cnn {
                    conv1: candle_nn::conv2d(1, 32, 5, cfg, vb.pp("conv1"))?,
                    conv2: candle_nn::conv2d(32, 64, 5, cfg, vb.pp("conv2"))?,
                    fc1: candle_nn::linear(7 * 7 * 64, 512, vb.pp("fc1"))?,
                    fc2: candle_nn::linear(512, 10, vb.pp("fc2"))?,
                }
            }
            ModelKind::DigitsMlp => Net::Digits {
                fc1: candle_nn::linear(64, 64, vb.pp("fc1"))?,
                fc2: candle_nn::linear(64, 10, vb.pp("fc2"))?,
            },
        };
        Ok(Model {
            kind,
            varmap,
            vars,
            net,
        })
    }

    /// Builds a model from a candle `VarMap` that holds every parameter of `kind` (e.g. one loaded
    /// from safetensors with `VarMap::load`).
    pub fn from_varmap(kind: ModelKind, varmap: &VarMap, device: &Device) -> Result<Self> {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| Error::Checkpoint("variable map lock poisoned".into()))?;
        let tensors: HashMap<String, Tensor> = data
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        drop(data);
        let flat = crate::params::flatten_named(kind, &tensors)?;
        Model::new(kind, &flat, device)
    }

    /// Which network this is.
    pub fn kind(&self) -> ModelKind {
        self.kind
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
        let mut out = Vec::with_capacity(self.kind.num_params());
        for v in &self.vars {
            out.extend(v.as_tensor().flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// Overwrites every parameter from a flat vector in canonical order.
    pub fn set_flat(&self, flat: &[f32]) -> Result<()> {
        let expected = self.kind.num_params();
        if flat.len() != expected {
            return Err(Error::WrongLength {
                got: flat.len(),
                expected,
            });
        }
        let mut off = 0;
        for v in &self.vars {
            let n = v.elem_count();
            let t = Tensor::from_slice(&flat[off..off + n], v.shape(), v.device())?;
            v.set(&t)?;
            off += n;
        }
        Ok(())
    }

    /// Logits for a batch `xs` of shape `[batch, input_features]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let out = match &self.net {
            Net::Mlp { fc1, fc2, fc3 } => {
                let h = fc1.forward(xs)?.relu()?;
                let h = fc2.forward(&h)?.relu()?;
                fc3.forward(&h)?
            }
            Net::Cnn {
                conv1,
                conv2,
                fc1,
                fc2,
            } => {
                let b = xs.dim(0)?;
                let h = xs.reshape((b, 1, 28, 28))?;
                let h = conv1.forward(&h)?.relu()?.max_pool2d(2)?;
                let h = conv2.forward(&h)?.relu()?.max_pool2d(2)?;
                let h = h.flatten_from(1)?;
                let h = fc1.forward(&h)?.relu()?;
                fc2.forward(&h)?
            }
            Net::Digits { fc1, fc2 } => {
                let h = fc1.forward(xs)?.relu()?;
                fc2.forward(&h)?
            }
        };
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_the_papers() {
        assert_eq!(ModelKind::Mlp.num_params(), 199_210);
        assert_eq!(ModelKind::Cnn.num_params(), 1_663_370);
        assert_eq!(ModelKind::DigitsMlp.num_params(), 4_810);
        let names: Vec<String> = ModelKind::Cnn
            .layout()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(
            names,
            [
                "conv1.bias",
                "conv1.weight",
                "conv2.bias",
                "conv2.weight",
                "fc1.bias",
                "fc1.weight",
                "fc2.bias",
                "fc2.weight"
            ]
        );
    }

    #[test]
    fn init_is_seeded_and_bounded() {
        let a = ModelKind::DigitsMlp.init(5);
        assert_eq!(a, ModelKind::DigitsMlp.init(5));
        assert_ne!(a, ModelKind::DigitsMlp.init(6));
        // fc1.bias comes first, fan_in 64 -> bound 1/8.
        assert!(a[..64].iter().all(|v| v.abs() <= 0.125));
    }

    #[test]
    fn flat_round_trip_and_forward_shapes() {
        let dev = Device::Cpu;
        for kind in [ModelKind::Mlp, ModelKind::Cnn, ModelKind::DigitsMlp] {
            let p = kind.init(1);
            let m = Model::new(kind, &p, &dev).unwrap();
            assert_eq!(m.flat().unwrap(), p);
            let xs = Tensor::zeros((3, kind.input_features()), DType::F32, &dev).unwrap();
            assert_eq!(m.forward(&xs).unwrap().dims(), &[3, 10]);
            let q = kind.init(2);
            m.set_flat(&q).unwrap();
            assert_eq!(m.flat().unwrap(), q);
            let back = Model::from_varmap(kind, m.varmap(), &dev).unwrap();
            assert_eq!(back.flat().unwrap(), q);
        }
        assert!(Model::new(ModelKind::Mlp, &[0.0; 3], &dev).is_err());
    }
}
