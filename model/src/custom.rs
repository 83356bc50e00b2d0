//! A model of one's own: any network written with candle-nn, trained by Cohort like a declared
//! one (same seeded initialisation, canonical parameter order, safetensors keys, training loop,
//! codecs and aggregation).
//!
//! ```ignore
//! struct Tiny { fc1: Linear, fc2: Linear }
//! impl CustomModel for Tiny {
//!     fn build(vb: VarBuilder, input: usize, classes: usize) -> candle_core::Result<Self> {
//!         Ok(Tiny { fc1: linear(input, 32, vb.pp("fc1"))?, fc2: linear(32, classes, vb.pp("fc2"))? })
//!     }
//!     fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
//!         self.fc2.forward(&self.fc1.forward(xs)?.tanh()?)
//!     }
//! }
//! let spec = ModelSpec::custom::<Tiny>("tiny", InputShape::Flat(64), 10)?;
//! ```
//!
//! [`ModelSpec::custom`](crate::spec::ModelSpec::custom) builds the model once to learn its
//! parameters' names and shapes; the initial values then come from the seed like every model's
//! (uniform in +-1/sqrt(fan_in), fan_in being the product of a tensor's dimensions after the
//! first, and a one-dimensional `X.bias` taking `X.weight`'s), so every node derives the same
//! bits. A custom model trains on candle's autograd (the fast MLP path is for declared MLPs).

use std::sync::Arc;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::error::{Error, Result};
use crate::spec::ParamSpec;

/// A network of one's own: built from a `VarBuilder`, a forward pass, a loss and the count of
/// right predictions (the accuracy's numerator).
pub trait CustomModel: Send + Sync {
    /// Creates every parameter through `vb` (`vb.pp("fc1")` gives `fc1.weight` and `fc1.bias`:
    /// the safetensors keys) for inputs of `input` features and `classes` outputs.
    fn build(vb: VarBuilder, input: usize, classes: usize) -> candle_core::Result<Self>
    where
        Self: Sized;

    /// Logits `[batch, classes]` of a batch `[batch, input]`.
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor>;

    /// The mean training loss of a batch (`labels` are `u32` class numbers); cross-entropy
    /// unless overridden.
    fn loss(&self, logits: &Tensor, labels: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::loss::cross_entropy(logits, labels)
    }

    /// How many of a batch's predictions are right; the arg-max class unless overridden.
    fn correct(&self, logits: &Tensor, labels: &Tensor) -> candle_core::Result<usize> {
        let right = logits
            .argmax(D::Minus1)?
            .eq(labels)?
            .to_dtype(DType::U32)?
            .sum_all()?
            .to_scalar::<u32>()?;
        Ok(right as usize)
    }
}

/// A built custom network, its type erased.
pub(crate) trait DynModel: Send + Sync {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor>;
    fn loss(&self, logits: &Tensor, labels: &Tensor) -> candle_core::Result<Tensor>;
    fn correct(&self, logits: &Tensor, labels: &Tensor) -> candle_core::Result<usize>;
}

impl<M: CustomModel> DynModel for M {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        CustomModel::forward(self, xs)
    }
    fn loss(&self, logits: &Tensor, labels: &Tensor) -> candle_core::Result<Tensor> {
        CustomModel::loss(self, logits, labels)
    }
    fn correct(&self, logits: &Tensor, labels: &Tensor) -> candle_core::Result<usize> {
        CustomModel::correct(self, logits, labels)
    }
}

type BuildFn =
    dyn Fn(VarBuilder, usize, usize) -> candle_core::Result<Box<dyn DynModel>> + Send + Sync;

/// A custom model's recipe: its name, how to build it, and the parameter layout learned by
/// building it once.
#[derive(Clone)]
pub struct Custom {
    name: String,
    build: Arc<BuildFn>,
    layout: Vec<ParamSpec>,
}

impl std::fmt::Debug for Custom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Custom")
            .field("name", &self.name)
            .field("layout", &self.layout)
            .finish()
    }
}

/// Two recipes are the same model when their names and layouts are.
impl PartialEq for Custom {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.layout == other.layout
    }
}

impl Eq for Custom {}

impl Custom {
    /// The recipe of `M` for `input` features and `classes` outputs; builds it once on the CPU to
    /// read its parameters' names and shapes.
    pub(crate) fn new<M: CustomModel + 'static>(
        name: &str,
        input: usize,
        classes: usize,
    ) -> Result<Self> {
        let build: Arc<BuildFn> = Arc::new(|vb, input, classes| {
            M::build(vb, input, classes).map(|m| Box::new(m) as Box<dyn DynModel>)
        });
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        build(vb, input, classes)?;
        let data = varmap
            .data()
            .lock()
            .map_err(|_| Error::Checkpoint("variable map lock poisoned".into()))?;
        let shapes: Vec<(String, Vec<usize>)> = data
            .iter()
            .map(|(k, v)| (k.clone(), v.dims().to_vec()))
            .collect();
        drop(data);
        if shapes.is_empty() {
            return Err(Error::Model(format!(
                "custom model '{name}' created no parameters through its VarBuilder"
            )));
        }
        let fan_in = |shape: &[usize]| shape.iter().skip(1).product::<usize>().max(1);
        let mut layout: Vec<ParamSpec> = shapes
            .iter()
            .map(|(n, shape)| {
                let sibling = n
                    .strip_suffix(".bias")
                    .and_then(|p| shapes.iter().find(|(m, _)| *m == format!("{p}.weight")));
                let fan_in = match (shape.len(), sibling) {
                    (1, Some((_, w))) => fan_in(w),
                    (1, None) => shape.first().copied().unwrap_or(1).max(1),
                    _ => fan_in(shape),
                };
                ParamSpec {
                    name: n.clone(),
                    shape: shape.clone(),
                    fan_in,
                }
            })
            .collect();
        layout.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Custom {
            name: name.to_string(),
            build,
            layout,
        })
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The parameters, sorted by name.
    pub fn layout(&self) -> &[ParamSpec] {
        &self.layout
    }

    /// Builds the network on `vb`, whose variable map already holds every parameter.
    pub(crate) fn build(
        &self,
        vb: VarBuilder,
        input: usize,
        classes: usize,
    ) -> Result<Box<dyn DynModel>> {
        Ok((self.build)(vb, input, classes)?)
    }
}

#[cfg(test)]
mod tests {
    use candle_nn::{Linear, Module, linear};

    use super::*;
    use crate::net::{InputShape, Model, ModelSpec};
    use crate::rng::Rng;
    use crate::train::{Optimizer, TrainConfig, Work, evaluate, train_local};

    /// `fc2(tanh(fc1(x))) + skip(x)`, 8 hidden units.
    struct Skip {
        fc1: Linear,
        fc2: Linear,
        skip: Linear,
    }

    impl CustomModel for Skip {
        fn build(vb: VarBuilder, input: usize, classes: usize) -> candle_core::Result<Self> {
            Ok(Skip {
                fc1: linear(input, 8, vb.pp("fc1"))?,
                fc2: linear(8, classes, vb.pp("fc2"))?,
                skip: linear(input, classes, vb.pp("skip"))?,
            })
        }

        fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
            self.fc2.forward(&self.fc1.forward(xs)?.tanh()?)? + self.skip.forward(xs)?
        }
    }

    /// Creates nothing.
    struct Empty;

    impl CustomModel for Empty {
        fn build(_: VarBuilder, _: usize, _: usize) -> candle_core::Result<Self> {
            Ok(Empty)
        }

        fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
            Ok(xs.clone())
        }
    }

    #[test]
    fn a_custom_model_has_a_seeded_layout_and_trains() {
        let spec = ModelSpec::custom::<Skip>("skip", InputShape::Flat(64), 10).unwrap();
        let layout: Vec<(String, Vec<usize>, usize)> = spec
            .layout()
            .into_iter()
            .map(|p| (p.name, p.shape, p.fan_in))
            .collect();
        assert_eq!(
            layout,
            [
                ("fc1.bias".to_string(), vec![8], 64),
                ("fc1.weight".into(), vec![8, 64], 64),
                ("fc2.bias".into(), vec![10], 8),
                ("fc2.weight".into(), vec![10, 8], 8),
                ("skip.bias".into(), vec![10], 64),
                ("skip.weight".into(), vec![10, 64], 64),
            ]
        );
        assert_eq!(spec.to_string(), "custom:skip(64 features -> 10 classes)");
        assert!(!crate::fast::supports(&spec));
        let init = spec.init(3);
        assert_eq!(init, spec.init(3));
        assert_eq!(init.len(), 8 * 64 + 8 + 10 * 8 + 10 + 10 * 64 + 10);
        // fc1.bias first, bound 1/sqrt(64).
        assert!(init[..8].iter().all(|v| v.abs() <= 0.125));
        let data = crate::data::digits().unwrap();
        let dev = Device::Cpu;
        let m = Model::new(&spec, &init, &dev).unwrap();
        assert_eq!(m.flat().unwrap(), init);
        let (acc0, _) = evaluate(&m, &data.test).unwrap();
        let cfg = TrainConfig {
            work: Work::Epochs(3),
            batch: 16,
            optimizer: Optimizer::Sgd {
                lr: 0.05,
                momentum: 0.9,
            },
            prox_mu: 0.0,
            dp_sgd: None,
        };
        let out = train_local(&spec, &init, &data.train, &cfg, &mut Rng::seed(1), &dev).unwrap();
        let trained: Vec<f32> = init.iter().zip(&out.delta).map(|(a, d)| a + d).collect();
        let (acc, _) = crate::train::evaluate_params(&spec, &trained, &data.test).unwrap();
        assert!(acc > 0.9 && acc > acc0 + 0.5, "{acc0} -> {acc}");
        // The safetensors keys are the custom names.
        let bytes = crate::params::to_safetensors_bytes(&spec, &trained).unwrap();
        assert_eq!(
            crate::params::from_safetensors_bytes(&spec, &bytes).unwrap(),
            trained
        );
        let e = ModelSpec::custom::<Empty>("empty", InputShape::Flat(4), 2).unwrap_err();
        assert!(e.to_string().contains("created no parameters"), "{e}");
    }
}
