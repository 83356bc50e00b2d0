//! The models, in candle-nn, built from a [`ModelSpec`]. Parameter names (`fc1.weight`, ...) are
//! the safetensors keys, and the canonical parameter order everywhere in Cohort is these names
//! sorted.

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{Conv2d, Conv2dConfig, Linear, VarBuilder, VarMap};

use crate::custom::DynModel;
use crate::error::{Error, Result};
use crate::spec::Op;
pub use crate::spec::{Activation, InputShape, Layer, ModelSpec, ParamSpec};

/// A network with its trainable variables.
pub struct Model {
    spec: ModelSpec,
    varmap: VarMap,
    /// Variables in canonical (sorted-name) order.
    vars: Vec<Var>,
    /// The forward pass.
    net: Net,
}

/// A declared model's steps, or a custom model.
enum Net {
    Declared(Vec<Step>),
    Custom(Box<dyn DynModel>),
}

/// One step of the forward pass, holding its layer.
enum Step {
    ToImage(usize, usize, usize),
    Conv(Conv2d),
    MaxPool(usize),
    Flatten,
    /// The layer and its nonlinearity (none for the output layer).
    Dense(Linear, Option<Activation>),
}

impl Model {
    /// Builds `spec` holding the flat parameters `flat` (canonical order).
    pub fn new(spec: &ModelSpec, flat: &[f32], device: &Device) -> Result<Self> {
        if let Some(cfg) = spec.lm_config() {
            return Err(crate::Error::Model(format!(
                "{cfg} is built by transformer::Transformer, not net::Model"
            )));
        }
        let ops = match spec.custom_recipe() {
            Some(_) => Vec::new(),
            None => spec.ops()?,
        };
        let (varmap, vars) = crate::params::vars_from_flat(&spec.layout(), flat, device)?;
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        if let Some(c) = spec.custom_recipe() {
            let net = Net::Custom(c.build(vb, spec.input_features(), spec.classes())?);
            return Ok(Model {
                spec: spec.clone(),
                varmap,
                vars,
                net,
            });
        }
        let mut net = Vec::with_capacity(ops.len());
        for op in ops {
            net.push(match op {
                Op::ToImage {
                    channels,
                    height,
                    width,
                } => Step::ToImage(channels, height, width),
                Op::Conv {
                    name,
                    cin,
                    cout,
                    kernel,
                } => {
                    let cfg = Conv2dConfig {
                        padding: kernel / 2,
                        ..Default::default()
                    };
                    Step::Conv(candle_nn::conv2d(cin, cout, kernel, cfg, vb.pp(name))?)
                }
                Op::MaxPool { size } => Step::MaxPool(size),
                Op::Flatten => Step::Flatten,
                Op::Dense {
                    name,
                    inp,
                    out,
                    activation,
                } => Step::Dense(candle_nn::linear(inp, out, vb.pp(name))?, activation),
            });
        }
        Ok(Model {
            spec: spec.clone(),
            varmap,
            vars,
            net: Net::Declared(net),
        })
    }

    /// Builds a model from a candle `VarMap` that holds every parameter of `spec` (e.g. one loaded
    /// from safetensors with `VarMap::load`).
    pub fn from_varmap(spec: &ModelSpec, varmap: &VarMap, device: &Device) -> Result<Self> {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| Error::Checkpoint("variable map lock poisoned".into()))?;
        let tensors: HashMap<String, Tensor> = data
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        drop(data);
        let flat = crate::params::flatten_named(spec, &tensors)?;
        Model::new(spec, &flat, device)
    }

    /// Which network this is.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
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

    /// Logits for a batch `xs` of shape `[batch, input_features]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let steps = match &self.net {
            Net::Declared(steps) => steps,
            Net::Custom(m) => return Ok(m.forward(xs)?),
        };
        let mut h = xs.clone();
        for step in steps {
            h = match step {
                Step::ToImage(c, height, width) => {
                    let b = h.dim(0)?;
                    h.reshape((b, *c, *height, *width))?
                }
                Step::Conv(conv) => conv.forward(&h)?.relu()?,
                Step::MaxPool(size) => max_pool(&h, *size)?,
                Step::Flatten => h.flatten_from(1)?,
                Step::Dense(fc, Some(Activation::Relu)) => fc.forward(&h)?.relu()?,
                Step::Dense(fc, Some(Activation::Tanh)) => fc.forward(&h)?.tanh()?,
                Step::Dense(fc, None) => fc.forward(&h)?,
            };
        }
        Ok(h)
    }

    /// The mean training loss of a batch: cross-entropy, or a custom model's own.
    pub fn loss(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        Ok(match &self.net {
            Net::Custom(m) => m.loss(logits, labels)?,
            Net::Declared(_) => candle_nn::loss::cross_entropy(logits, labels)?,
        })
    }

    /// How many predictions of a batch are right (arg-max, or a custom model's own count).
    pub fn correct(&self, logits: &Tensor, labels: &Tensor) -> Result<usize> {
        Ok(match &self.net {
            Net::Custom(m) => m.correct(logits, labels)?,
            Net::Declared(_) => logits
                .argmax(candle_core::D::Minus1)?
                .eq(labels)?
                .to_dtype(DType::U32)?
                .sum_all()?
                .to_scalar::<u32>()? as usize,
        })
    }
}

/// Max pooling of `[batch, channels, height, width]` with window and stride `size` (the remainder
/// rows and columns dropped), as candle's `max_pool2d`, but with the gradient of the maximum:
/// each window's output gradient goes to its maximum (to each of tied maxima). candle 0.11's own
/// `max_pool2d` backward multiplies it by the share of the window that holds the maximum (1/4 for
/// the one maximum of a 2x2 window) and maps the remainder rows wrongly; here the pool is a
/// reshape and two `max` reductions, whose backward is exact.
fn max_pool(h: &Tensor, size: usize) -> Result<Tensor> {
    let (b, c, height, width) = h.dims4()?;
    let (oh, ow) = (height / size, width / size);
    let h = h
        .narrow(2, 0, oh * size)?
        .narrow(3, 0, ow * size)?
        .contiguous()?
        .reshape((b, c, oh, size, ow, size))?;
    Ok(h.max(5)?.max(3)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_pool_is_candles_forward_with_the_gradient_of_the_maximum() {
        let dev = Device::Cpu;
        // 1 x 2 x 5 x 5: windows of 2 leave a row and a column over; all values distinct.
        let xs: Vec<f32> = (0..50).map(|i| ((i * 37) % 50) as f32 - 20.0).collect();
        let v = Var::from_vec(xs, (1, 2, 5, 5), &dev).unwrap();
        let ours = max_pool(v.as_tensor(), 2).unwrap();
        let theirs = v.as_tensor().max_pool2d(2).unwrap();
        assert_eq!(
            ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let grad = |y: &Tensor| {
            let g = y.sum_all().unwrap().backward().unwrap();
            let g = g.get(v.as_tensor()).unwrap().flatten_all().unwrap();
            g.to_vec1::<f32>().unwrap()
        };
        // d(sum of maxima)/dx: 1 at each window's maximum, 0 elsewhere (and in the remainder).
        let x = v
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut want = vec![0.0f32; 50];
        for ch in 0..2 {
            for py in 0..2 {
                for px in 0..2 {
                    let at = (0..4)
                        .map(|i| ch * 25 + (py * 2 + i / 2) * 5 + px * 2 + i % 2)
                        .max_by(|&a, &b| x[a].total_cmp(&x[b]))
                        .unwrap();
                    want[at] = 1.0;
                }
            }
        }
        assert_eq!(grad(&ours), want);
        // candle's own backward does not (this test notices when that changes); on a 2x2 input,
        // where no remainder is dropped, it gives a quarter of it.
        assert_ne!(grad(&theirs), want);
        let w = Var::from_vec(vec![1.0f32, 4.0, 3.0, 2.0], (1, 1, 2, 2), &dev).unwrap();
        for (y, g) in [
            (max_pool(w.as_tensor(), 2).unwrap(), 1.0),
            (w.as_tensor().max_pool2d(2).unwrap(), 0.25),
        ] {
            let grads = y.sum_all().unwrap().backward().unwrap();
            let got = grads.get(w.as_tensor()).unwrap().flatten_all().unwrap();
            assert_eq!(got.to_vec1::<f32>().unwrap(), [0.0, g, 0.0, 0.0]);
        }
    }

    #[test]
    fn flat_round_trip_and_forward_shapes() {
        let dev = Device::Cpu;
        let layers = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let rgb = InputShape::Image {
            channels: 3,
            height: 9,
            width: 7,
        };
        let declared = [
            ModelSpec::declare("mlp", &layers(&["dense:5"]), InputShape::Flat(6), 3).unwrap(),
            ModelSpec::declare("logistic", &[], InputShape::Flat(6), 4).unwrap(),
            ModelSpec::declare(
                "cnn",
                &layers(&["conv3x3:2", "maxpool2", "dense:4"]),
                rgb,
                5,
            )
            .unwrap(),
        ];
        let presets = ModelSpec::presets().map(|(_, p)| p);
        for spec in presets.iter().chain(&declared) {
            let p = spec.init(1);
            let m = Model::new(spec, &p, &dev).unwrap();
            assert_eq!(m.flat().unwrap(), p);
            let xs = Tensor::zeros((3, spec.input_features()), DType::F32, &dev).unwrap();
            assert_eq!(m.forward(&xs).unwrap().dims(), &[3, spec.classes()]);
            let q = spec.init(2);
            m.set_flat(&q).unwrap();
            assert_eq!(m.flat().unwrap(), q);
            let back = Model::from_varmap(spec, m.varmap(), &dev).unwrap();
            assert_eq!(back.flat().unwrap(), q);
        }
        assert!(Model::new(&ModelSpec::mlp(), &[0.0; 3], &dev).is_err());
    }
}
