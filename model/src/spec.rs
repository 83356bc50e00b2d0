//! Model declarations: the genesis `[model]` section's `kind` and `layers`, with the input shape
//! and the number of classes taken from the data schema.
//!
//! ```toml
//! [model]
//! kind = "cnn"
//! layers = ["conv5x5:32", "maxpool2", "conv5x5:64", "maxpool2", "dense:512"]
//! ```
//!
//! A declaration is a stack of hidden layers followed by one output layer of `classes` units:
//! - `dense:N`: a fully connected layer of `N` units and a ReLU (the input is flattened first);
//!   `dense:N:tanh` takes a tanh instead (`dense:N:relu` is `dense:N`): a bounded activation
//!   whose gradients suit DP-SGD's clipping (Papernot et al. 2021, "Tempered Sigmoid Activations
//!   for Deep Learning with Differential Privacy");
//! - `convKxK:N`: a `K`x`K` convolution (odd `K`, stride 1, "same" padding `K / 2`) to `N`
//!   channels and a ReLU;
//! - `maxpoolS`: `S`x`S` max pooling with stride `S` (sizes round down, as in PyTorch).
//!
//! `kind` is `mlp` (dense layers only), `cnn` (at least one convolution, image input),
//! `logistic` (no hidden layer: softmax regression) or `digits-mlp`. Without `layers`, a kind
//! takes its preset's: McMahan et al.'s 2NN (`mlp`: two dense layers of 200) and CNN (`cnn`), and
//! the 64-unit digits MLP. On their data (28x28 grey images, 10 classes; 8x8 for the digits) the
//! presets are exactly the networks they always were: same parameter names, shapes and initial
//! bits.
//!
//! Parameter names are the safetensors keys: convolutions are `conv1`, `conv2`, ... and dense
//! layers `fc1`, `fc2`, ... in order, the output layer being the last `fc`; each has `.weight`
//! and `.bias`. The canonical parameter order is these names sorted.

use std::fmt;

use crate::custom::{Custom, CustomModel};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::transformer::TransformerConfig;

/// Most hidden layers a declaration may have.
pub const MAX_LAYERS: usize = 32;
/// Widest dense layer, and most channels of a convolution.
pub const MAX_WIDTH: usize = 65_536;
/// Largest convolution kernel side.
pub const MAX_KERNEL: usize = 15;
/// Largest pooling window side.
pub const MAX_POOL: usize = 16;
/// Most parameters a declared model may have (400 MB of `f32`).
pub const MAX_PARAMS: usize = 100_000_000;

/// What a model's input is: a flat feature vector (tabular data) or an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputShape {
    /// `n` features.
    Flat(usize),
    /// `channels` planes of `height` x `width` pixels, channel-major.
    Image {
        /// 1 (grey) or 3 (RGB).
        channels: usize,
        /// Rows.
        height: usize,
        /// Columns.
        width: usize,
    },
}

impl InputShape {
    /// Input floats per sample.
    pub fn size(self) -> usize {
        match self {
            Self::Flat(n) => n,
            Self::Image {
                channels,
                height,
                width,
            } => channels * height * width,
        }
    }

    /// MNIST's 28x28 grey images.
    pub const MNIST: InputShape = InputShape::Image {
        channels: 1,
        height: 28,
        width: 28,
    };

    /// The 8x8 digits.
    pub const DIGITS: InputShape = InputShape::Image {
        channels: 1,
        height: 8,
        width: 8,
    };
}

impl fmt::Display for InputShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flat(n) => write!(f, "{n} features"),
            Self::Image {
                channels,
                height,
                width,
            } => write!(f, "{channels}x{height}x{width} images"),
        }
    }
}

/// The nonlinearity after a hidden dense layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// `max(0, z)`: the default, and every preset's.
    #[default]
    Relu,
    /// `tanh(z)`, whose derivative is `1 - tanh(z)^2`.
    Tanh,
}

impl Activation {
    /// The name in a layer declaration (`relu`, `tanh`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Relu => "relu",
            Self::Tanh => "tanh",
        }
    }
}

/// One hidden layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// Fully connected, `units` outputs, then `activation`.
    Dense {
        /// Output units.
        units: usize,
        /// The nonlinearity (ReLU unless declared `dense:N:tanh`).
        activation: Activation,
    },
    /// `kernel` x `kernel` convolution, stride 1, padding `kernel / 2`, ReLU.
    Conv {
        /// Odd kernel side.
        kernel: usize,
        /// Output channels.
        channels: usize,
    },
    /// Max pooling, window and stride `size`.
    MaxPool {
        /// Window side.
        size: usize,
    },
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dense {
                units,
                activation: Activation::Relu,
            } => write!(f, "dense:{units}"),
            Self::Dense { units, activation } => write!(f, "dense:{units}:{}", activation.name()),
            Self::Conv { kernel, channels } => write!(f, "conv{kernel}x{kernel}:{channels}"),
            Self::MaxPool { size } => write!(f, "maxpool{size}"),
        }
    }
}

fn model_err(what: impl Into<String>) -> Error {
    Error::Model(what.into())
}

impl std::str::FromStr for Layer {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            model_err(format!(
                "layer '{s}': {why} (expected dense:N, dense:N:tanh, convKxK:N or maxpoolS)"
            ))
        };
        let number = |t: &str| -> Result<usize> {
            t.parse::<usize>()
                .map_err(|_| bad(&format!("'{t}' is not a whole number")))
        };
        if let Some(rest) = s.strip_prefix("dense:") {
            let (n, activation) = match rest.split_once(':') {
                None => (rest, Activation::Relu),
                Some((n, "relu")) => (n, Activation::Relu),
                Some((n, "tanh")) => (n, Activation::Tanh),
                Some((_, a)) => {
                    return Err(bad(&format!(
                        "unknown activation '{a}' (expected relu or tanh)"
                    )));
                }
            };
            return Ok(Self::Dense {
                units: number(n)?,
                activation,
            });
        }
        if let Some(rest) = s.strip_prefix("conv") {
            let (k, n) = rest.split_once(':').ok_or_else(|| bad("no ':CHANNELS'"))?;
            let (a, b) = k.split_once('x').ok_or_else(|| bad("no KxK kernel"))?;
            let (a, b) = (number(a)?, number(b)?);
            if a != b {
                return Err(bad("only square kernels are supported"));
            }
            return Ok(Self::Conv {
                kernel: a,
                channels: number(n)?,
            });
        }
        if let Some(n) = s.strip_prefix("maxpool") {
            return Ok(Self::MaxPool { size: number(n)? });
        }
        Err(bad("unknown layer"))
    }
}

/// The model family a declaration names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Dense layers only.
    Mlp,
    /// Convolutions (and pooling, dense layers) on images.
    Cnn,
    /// No hidden layer: softmax regression (logistic regression for two classes).
    Logistic,
    /// A [`CustomModel`](crate::custom::CustomModel) of one's own.
    Custom,
    /// A decoder-only character transformer ([`crate::transformer`]) on a token stream; its
    /// "classes" are the vocabulary.
    Transformer,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Self::Mlp => "mlp",
            Self::Cnn => "cnn",
            Self::Logistic => "logistic",
            Self::Custom => "custom",
            Self::Transformer => "transformer",
        }
    }
}

/// A model: hidden layers, input shape and number of classes. Built by [`ModelSpec::declare`]
/// (checked) or the presets [`ModelSpec::mlp`], [`ModelSpec::cnn`], [`ModelSpec::digits_mlp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    family: Family,
    layers: Vec<Layer>,
    input: InputShape,
    classes: usize,
    /// The recipe of a custom model (family `Custom` only).
    custom: Option<Custom>,
    /// The transformer's shape (family `Transformer` only; `classes` is the vocabulary size).
    lm: Option<TransformerConfig>,
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

/// One step of the forward pass, with the shapes worked out (see [`ModelSpec::ops`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Reshape the flat input to `[batch, channels, height, width]`.
    ToImage {
        /// Channels.
        channels: usize,
        /// Rows.
        height: usize,
        /// Columns.
        width: usize,
    },
    /// Convolution `name` (`cin` -> `cout`, `kernel`, padding `kernel / 2`) and ReLU.
    Conv {
        /// Parameter prefix (`conv1`).
        name: String,
        /// Input channels.
        cin: usize,
        /// Output channels.
        cout: usize,
        /// Kernel side.
        kernel: usize,
    },
    /// Max pooling with window and stride `size`.
    MaxPool {
        /// Window side.
        size: usize,
    },
    /// Flatten to `[batch, features]`.
    Flatten,
    /// Linear layer `name` (`inp` -> `out`), then `activation` (none for the output layer).
    Dense {
        /// Parameter prefix (`fc1`).
        name: String,
        /// Inputs.
        inp: usize,
        /// Outputs.
        out: usize,
        /// The nonlinearity that follows; `None` for the output layer (logits).
        activation: Option<Activation>,
    },
}

impl ModelSpec {
    /// McMahan et al.'s "2NN": 784-200-200-10 with ReLU, 199,210 parameters.
    pub fn mlp() -> Self {
        ModelSpec {
            family: Family::Mlp,
            layers: preset_layers(Family::Mlp, false),
            input: InputShape::MNIST,
            classes: 10,
            custom: None,
            lm: None,
        }
    }

    /// McMahan et al.'s CNN: conv5x5(32)-maxpool-conv5x5(64)-maxpool-fc512-fc10, 1,663,370
    /// parameters.
    pub fn cnn() -> Self {
        ModelSpec {
            family: Family::Cnn,
            layers: preset_layers(Family::Cnn, false),
            input: InputShape::MNIST,
            classes: 10,
            custom: None,
            lm: None,
        }
    }

    /// A small 64-64-10 MLP for the 8x8 digits, 4,810 parameters.
    pub fn digits_mlp() -> Self {
        ModelSpec {
            family: Family::Mlp,
            layers: preset_layers(Family::Mlp, true),
            input: InputShape::DIGITS,
            classes: 10,
            custom: None,
            lm: None,
        }
    }

    /// The three presets, by their names.
    pub fn presets() -> [(&'static str, ModelSpec); 3] {
        [
            ("mlp", Self::mlp()),
            ("cnn", Self::cnn()),
            ("digits-mlp", Self::digits_mlp()),
        ]
    }

    /// A checked declaration: `kind` (`mlp`, `cnn`, `logistic`, `digits-mlp`; `2nn` and `digits`
    /// are accepted aliases) with `layers` (empty: the kind's preset layers) on `input` with
    /// `classes` outputs. The error names the first thing wrong: an unknown kind or layer, a zero
    /// width, a layer that does not belong to the kind, a CNN whose shapes do not fit the input.
    pub fn declare(
        kind: &str,
        layers: &[String],
        input: InputShape,
        classes: usize,
    ) -> Result<Self> {
        let (family, digits) = match kind {
            "mlp" | "2nn" => (Family::Mlp, false),
            "digits-mlp" | "digits" => (Family::Mlp, true),
            "cnn" => (Family::Cnn, false),
            "logistic" | "softmax" => (Family::Logistic, false),
            "transformer" => {
                return Err(model_err(
                    "a transformer is declared by its shape and vocabulary \
                     (ModelSpec::transformer; the genesis [model.transformer] and vocab), not by layers",
                ));
            }
            _ => {
                return Err(model_err(format!(
                    "unknown model kind '{kind}': expected mlp, cnn, logistic or digits-mlp"
                )));
            }
        };
        if digits && !layers.is_empty() {
            return Err(model_err(
                "digits-mlp is a preset: declare kind = \"mlp\" with layers to change its layers",
            ));
        }
        let layers = if layers.is_empty() {
            preset_layers(family, digits)
        } else {
            layers
                .iter()
                .map(|l| l.parse())
                .collect::<Result<Vec<Layer>>>()?
        };
        let spec = ModelSpec {
            family,
            layers,
            input,
            classes,
            custom: None,
            lm: None,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// A model of one's own ([`CustomModel`]) named `name`, on `input` with `classes` outputs.
    /// Builds it once to learn its parameters (an error if it creates none).
    pub fn custom<M: CustomModel + 'static>(
        name: &str,
        input: InputShape,
        classes: usize,
    ) -> Result<Self> {
        let spec = ModelSpec {
            family: Family::Custom,
            layers: Vec::new(),
            input,
            classes,
            custom: Some(Custom::new::<M>(name, input.size(), classes)?),
            lm: None,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// A character transformer of shape `cfg` over a vocabulary of `vocab` characters, trained on
    /// a token stream ([`crate::data::Dataset::tokens`]). Its input has no features (a row is
    /// one character), its classes are the characters. At most
    /// [`crate::compact::MAX_TRAIN_CLASSES`] characters (token streams hold `u8` ids).
    pub fn transformer(cfg: TransformerConfig, vocab: usize) -> Result<Self> {
        cfg.validate()?;
        let max = crate::compact::MAX_TRAIN_CLASSES;
        if !(2..=max).contains(&vocab) {
            return Err(model_err(format!(
                "a vocabulary of {vocab} characters: the transformer takes 2 to {max}"
            )));
        }
        let spec = ModelSpec {
            family: Family::Transformer,
            layers: Vec::new(),
            input: InputShape::Flat(0),
            classes: vocab,
            custom: None,
            lm: Some(cfg),
        };
        let n = spec.num_params();
        if n > MAX_PARAMS {
            return Err(model_err(format!(
                "{cfg} has {n} parameters; at most {MAX_PARAMS}"
            )));
        }
        Ok(spec)
    }

    /// The transformer's shape, if this is one (its vocabulary size is [`ModelSpec::classes`]).
    pub fn lm_config(&self) -> Option<TransformerConfig> {
        self.lm
    }

    /// The custom model's recipe, if this is one.
    pub fn custom_recipe(&self) -> Option<&Custom> {
        self.custom.as_ref()
    }

    /// Checks every layer against the family, the limits and the shapes.
    pub fn validate(&self) -> Result<()> {
        if let Some(cfg) = self.lm {
            return Self::transformer(cfg, self.classes).map(|_| ());
        }
        if self.classes < 2 {
            return Err(model_err(format!(
                "{} classes: a classifier needs at least 2",
                self.classes
            )));
        }
        if self.input.size() == 0 {
            return Err(model_err("the input has no features"));
        }
        if let Some(c) = &self.custom {
            let n = c.layout().iter().map(ParamSpec::numel).sum::<usize>();
            if n > MAX_PARAMS {
                return Err(model_err(format!(
                    "custom model '{}' has {n} parameters; at most {MAX_PARAMS}",
                    c.name()
                )));
            }
            return Ok(());
        }
        if self.layers.len() > MAX_LAYERS {
            return Err(model_err(format!(
                "{} layers; at most {MAX_LAYERS}",
                self.layers.len()
            )));
        }
        match self.family {
            Family::Logistic if !self.layers.is_empty() => {
                return Err(model_err(
                    "a logistic (softmax regression) model has no hidden layers: leave layers empty",
                ));
            }
            Family::Mlp => {
                if let Some(l) = self
                    .layers
                    .iter()
                    .find(|l| !matches!(l, Layer::Dense { .. }))
                {
                    return Err(model_err(format!(
                        "layer '{l}': an mlp has only dense layers (use kind = \"cnn\")"
                    )));
                }
            }
            Family::Cnn => {
                if !matches!(self.input, InputShape::Image { .. }) {
                    return Err(model_err(format!(
                        "a cnn needs image input, and the data is {}",
                        self.input
                    )));
                }
                if !self.layers.iter().any(|l| matches!(l, Layer::Conv { .. })) {
                    return Err(model_err(
                        "a cnn needs at least one convKxK:N layer (use kind = \"mlp\" otherwise)",
                    ));
                }
            }
            Family::Logistic | Family::Custom | Family::Transformer => {}
        }
        for l in &self.layers {
            match *l {
                Layer::Dense { units, .. } if !(1..=MAX_WIDTH).contains(&units) => {
                    return Err(model_err(format!(
                        "layer '{l}': width must be between 1 and {MAX_WIDTH}"
                    )));
                }
                Layer::Conv { kernel, channels } => {
                    if !(1..=MAX_WIDTH).contains(&channels) {
                        return Err(model_err(format!(
                            "layer '{l}': channels must be between 1 and {MAX_WIDTH}"
                        )));
                    }
                    if kernel % 2 == 0 || !(1..=MAX_KERNEL).contains(&kernel) {
                        return Err(model_err(format!(
                            "layer '{l}': the kernel side must be odd, 1 to {MAX_KERNEL}"
                        )));
                    }
                }
                Layer::MaxPool { size } if !(2..=MAX_POOL).contains(&size) => {
                    return Err(model_err(format!(
                        "layer '{l}': the pooling window must be between 2 and {MAX_POOL}"
                    )));
                }
                _ => {}
            }
        }
        // Walks the shapes (a pool that leaves no pixel, a conv after a dense layer) and counts
        // parameters.
        let ops = self.ops_unchecked()?;
        let mut params = 0usize;
        for op in &ops {
            let n = match op {
                Op::Conv {
                    cin, cout, kernel, ..
                } => cin
                    .checked_mul(*cout)
                    .and_then(|v| v.checked_mul(kernel * kernel))
                    .and_then(|v| v.checked_add(*cout)),
                Op::Dense { inp, out, .. } => {
                    inp.checked_mul(*out).and_then(|v| v.checked_add(*out))
                }
                _ => Some(0),
            };
            params = n
                .and_then(|n| params.checked_add(n))
                .filter(|&p| p <= MAX_PARAMS)
                .ok_or_else(|| {
                    model_err(format!(
                        "{self} has more than {MAX_PARAMS} parameters; declare smaller layers"
                    ))
                })?;
        }
        Ok(())
    }

    /// The forward pass, step by step, with every shape worked out.
    pub fn ops(&self) -> Result<Vec<Op>> {
        self.validate()?;
        self.ops_unchecked()
    }

    fn ops_unchecked(&self) -> Result<Vec<Op>> {
        let mut ops = Vec::new();
        // The current activation: an image (c, h, w) or flat features.
        let mut image = match self.input {
            InputShape::Image {
                channels,
                height,
                width,
            } if self
                .layers
                .iter()
                .any(|l| !matches!(l, Layer::Dense { .. })) =>
            {
                ops.push(Op::ToImage {
                    channels,
                    height,
                    width,
                });
                Some((channels, height, width))
            }
            _ => None,
        };
        let mut flat = self.input.size();
        let (mut convs, mut denses) = (0, 0);
        for l in &self.layers {
            match (*l, image) {
                (Layer::Conv { kernel, channels }, Some((c, h, w))) => {
                    convs += 1;
                    ops.push(Op::Conv {
                        name: format!("conv{convs}"),
                        cin: c,
                        cout: channels,
                        kernel,
                    });
                    // Stride 1 and padding kernel / 2 keep an odd kernel's output the same size.
                    image = Some((channels, h, w));
                }
                (Layer::MaxPool { size }, Some((c, h, w))) => {
                    if h < size || w < size {
                        return Err(model_err(format!(
                            "layer '{l}': the activation here is {h}x{w}, smaller than the \
                             pooling window (the shapes do not fit the {})",
                            self.input
                        )));
                    }
                    ops.push(Op::MaxPool { size });
                    image = Some((c, h / size, w / size));
                }
                (Layer::Conv { .. } | Layer::MaxPool { .. }, None) => {
                    return Err(model_err(format!(
                        "layer '{l}' comes after a dense layer (or the input is flat): \
                         convolutions and pooling come first"
                    )));
                }
                (Layer::Dense { units, activation }, _) => {
                    if let Some((c, h, w)) = image.take() {
                        ops.push(Op::Flatten);
                        flat = c * h * w;
                    }
                    denses += 1;
                    ops.push(Op::Dense {
                        name: format!("fc{denses}"),
                        inp: flat,
                        out: units,
                        activation: Some(activation),
                    });
                    flat = units;
                }
            }
        }
        if let Some((c, h, w)) = image {
            ops.push(Op::Flatten);
            flat = c * h * w;
        }
        ops.push(Op::Dense {
            name: format!("fc{}", denses + 1),
            inp: flat,
            out: self.classes,
            activation: None,
        });
        Ok(ops)
    }

    /// Number of input features the model expects per sample.
    pub fn input_features(&self) -> usize {
        self.input.size()
    }

    /// The input shape.
    pub fn input(&self) -> InputShape {
        self.input
    }

    /// Number of classes (outputs).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The hidden layers.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Whether every layer is dense (an MLP or softmax regression): the layout is `fc1`, `fc2`,
    /// ... only, which [`crate::fast`] trains.
    pub fn is_dense_stack(&self) -> bool {
        self.custom.is_none()
            && self.lm.is_none()
            && self.layers.iter().all(|l| matches!(l, Layer::Dense { .. }))
    }

    /// The canonical layout: every parameter, sorted by name. Empty for a declaration that does
    /// not validate (every constructor validates).
    pub fn layout(&self) -> Vec<ParamSpec> {
        if let Some(c) = &self.custom {
            return c.layout().to_vec();
        }
        if let Some(cfg) = self.lm {
            return cfg.layout(self.classes);
        }
        let mut v = Vec::new();
        for op in self.ops_unchecked().unwrap_or_default() {
            match op {
                Op::Conv {
                    name,
                    cin,
                    cout,
                    kernel,
                } => {
                    let fan_in = cin * kernel * kernel;
                    v.push(ParamSpec {
                        name: format!("{name}.bias"),
                        shape: vec![cout],
                        fan_in,
                    });
                    v.push(ParamSpec {
                        name: format!("{name}.weight"),
                        shape: vec![cout, cin, kernel, kernel],
                        fan_in,
                    });
                }
                Op::Dense { name, inp, out, .. } => {
                    v.push(ParamSpec {
                        name: format!("{name}.bias"),
                        shape: vec![out],
                        fan_in: inp,
                    });
                    v.push(ParamSpec {
                        name: format!("{name}.weight"),
                        shape: vec![out, inp],
                        fan_in: inp,
                    });
                }
                Op::ToImage { .. } | Op::MaxPool { .. } | Op::Flatten => {}
            }
        }
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Total number of parameters.
    pub fn num_params(&self) -> usize {
        self.layout().iter().map(ParamSpec::numel).sum()
    }

    /// The initial parameters for `seed`: every tensor uniform in +-1/sqrt(fan_in) (PyTorch's
    /// default for `Linear` and `Conv2d`), drawn from this crate's own PRNG in canonical order so
    /// that every node derives the same bits from the genesis seed.
    ///
    /// A transformer takes its own initialisation ([`TransformerConfig::init`]: GPT-2's normal
    /// weights, unit norm gains, zero biases).
    pub fn init(&self, seed: u64) -> Vec<f32> {
        if let Some(cfg) = self.lm {
            return cfg.init(self.classes, seed);
        }
        let mut rng = Rng::derive(seed, 0x1417);
        let layout = self.layout();
        let mut out = Vec::with_capacity(layout.iter().map(ParamSpec::numel).sum());
        for spec in layout {
            let bound = 1.0 / (spec.fan_in as f64).sqrt();
            for _ in 0..spec.numel() {
                out.push(rng.uniform(-bound, bound) as f32);
            }
        }
        out
    }
}

/// `dense:units` with its ReLU, as every preset has.
fn relu_dense(units: usize) -> Layer {
    Layer::Dense {
        units,
        activation: Activation::Relu,
    }
}

fn preset_layers(family: Family, digits: bool) -> Vec<Layer> {
    match (family, digits) {
        (Family::Mlp, true) => vec![relu_dense(64)],
        (Family::Mlp, false) => vec![relu_dense(200); 2],
        (Family::Cnn, _) => vec![
            Layer::Conv {
                kernel: 5,
                channels: 32,
            },
            Layer::MaxPool { size: 2 },
            Layer::Conv {
                kernel: 5,
                channels: 64,
            },
            Layer::MaxPool { size: 2 },
            relu_dense(512),
        ],
        (Family::Logistic | Family::Custom | Family::Transformer, _) => Vec::new(),
    }
}

impl fmt::Display for ModelSpec {
    /// A preset's name (`mlp`, `cnn`, `digits-mlp`), or the declaration:
    /// `mlp[dense:128,dense:64](13 features -> 3 classes)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((name, _)) = Self::presets().iter().find(|(_, p)| p == self) {
            return f.write_str(name);
        }
        if let Some(cfg) = self.lm {
            return write!(f, "{cfg}(vocabulary {})", self.classes);
        }
        if let Some(c) = &self.custom {
            return write!(
                f,
                "custom:{}({} -> {} classes)",
                c.name(),
                self.input,
                self.classes
            );
        }
        let layers: Vec<String> = self.layers.iter().map(Layer::to_string).collect();
        write!(
            f,
            "{}[{}]({} -> {} classes)",
            self.family.name(),
            layers.join(","),
            self.input,
            self.classes
        )
    }
}

impl std::str::FromStr for ModelSpec {
    type Err = Error;
    /// A preset by name (`mlp` or `2nn`, `cnn`, `digits-mlp` or `digits`), for command lines.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mlp" | "2nn" => Ok(Self::mlp()),
            "cnn" => Ok(Self::cnn()),
            "digits-mlp" | "digits" => Ok(Self::digits_mlp()),
            _ => Err(crate::error::parse_err(
                "model",
                s,
                "expected mlp, cnn or digits-mlp",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declare(
        kind: &str,
        layers: &[&str],
        input: InputShape,
        classes: usize,
    ) -> Result<ModelSpec> {
        let layers: Vec<String> = layers.iter().map(|s| s.to_string()).collect();
        ModelSpec::declare(kind, &layers, input, classes)
    }

    #[test]
    fn presets_keep_their_layouts_and_names() {
        assert_eq!(ModelSpec::mlp().num_params(), 199_210);
        assert_eq!(ModelSpec::cnn().num_params(), 1_663_370);
        assert_eq!(ModelSpec::digits_mlp().num_params(), 4_810);
        for (name, p) in ModelSpec::presets() {
            assert_eq!(p.to_string(), name);
            assert_eq!(name.parse::<ModelSpec>().unwrap(), p);
        }
        // Declaring a preset kind without layers on the preset's data is the preset.
        assert_eq!(
            declare("mlp", &[], InputShape::MNIST, 10).unwrap(),
            ModelSpec::mlp()
        );
        let cnn = [
            "conv5x5:32",
            "maxpool2",
            "conv5x5:64",
            "maxpool2",
            "dense:512",
        ];
        assert_eq!(
            declare("cnn", &cnn, InputShape::MNIST, 10).unwrap(),
            ModelSpec::cnn()
        );
        assert_eq!(
            declare("digits-mlp", &[], InputShape::DIGITS, 10).unwrap(),
            ModelSpec::digits_mlp()
        );
        let shapes: Vec<(String, Vec<usize>)> = ModelSpec::cnn()
            .layout()
            .into_iter()
            .map(|s| (s.name, s.shape))
            .collect();
        assert_eq!(
            shapes,
            [
                ("conv1.bias".to_string(), vec![32]),
                ("conv1.weight".into(), vec![32, 1, 5, 5]),
                ("conv2.bias".into(), vec![64]),
                ("conv2.weight".into(), vec![64, 32, 5, 5]),
                ("fc1.bias".into(), vec![512]),
                ("fc1.weight".into(), vec![512, 3136]),
                ("fc2.bias".into(), vec![10]),
                ("fc2.weight".into(), vec![10, 512]),
            ]
        );
    }

    #[test]
    fn declared_models_take_the_schema_sizes() {
        let m = declare("mlp", &["dense:16", "dense:8"], InputShape::Flat(13), 3).unwrap();
        let names: Vec<(String, Vec<usize>)> =
            m.layout().into_iter().map(|s| (s.name, s.shape)).collect();
        assert_eq!(
            names,
            [
                ("fc1.bias".to_string(), vec![16]),
                ("fc1.weight".into(), vec![16, 13]),
                ("fc2.bias".into(), vec![8]),
                ("fc2.weight".into(), vec![8, 16]),
                ("fc3.bias".into(), vec![3]),
                ("fc3.weight".into(), vec![3, 8]),
            ]
        );
        assert!(m.is_dense_stack());
        assert_eq!(
            m.to_string(),
            "mlp[dense:16,dense:8](13 features -> 3 classes)"
        );
        let l = declare("logistic", &[], InputShape::Flat(5), 2).unwrap();
        assert_eq!(l.num_params(), 5 * 2 + 2);
        // The preset mlp on other data keeps its widths, with the data's sizes.
        let m = declare("mlp", &[], InputShape::Flat(7), 4).unwrap();
        assert_eq!(
            m.num_params(),
            7 * 200 + 200 + 200 * 200 + 200 + 200 * 4 + 4
        );
        let img = InputShape::Image {
            channels: 3,
            height: 9,
            width: 7,
        };
        let c = declare("cnn", &["conv3x3:4", "maxpool2", "dense:5"], img, 2).unwrap();
        // conv keeps 9x7, pool gives 4x3: 4 * 4 * 3 = 48 inputs to fc1.
        assert_eq!(c.num_params(), (4 * 3 * 9 + 4) + (48 * 5 + 5) + (5 * 2 + 2));
        assert!(!c.is_dense_stack());
        // A cnn with no dense layer flattens into its output layer.
        let c = declare("cnn", &["conv3x3:2"], img, 2).unwrap();
        assert_eq!(c.num_params(), (2 * 3 * 9 + 2) + (2 * 63 * 2 + 2));
    }

    #[test]
    fn tanh_dense_layers_parse_display_and_keep_the_layout() {
        let tanh = ["dense:200:tanh", "dense:200:tanh"];
        let t = declare("mlp", &tanh, InputShape::MNIST, 10).unwrap();
        assert_eq!(
            t.to_string(),
            "mlp[dense:200:tanh,dense:200:tanh](1x28x28 images -> 10 classes)"
        );
        assert_eq!(
            t.layers(),
            [Layer::Dense {
                units: 200,
                activation: Activation::Tanh
            }; 2]
        );
        // The 2NN's shape: same names, shapes and initial bits; only the nonlinearity differs.
        let mlp = ModelSpec::mlp();
        assert_ne!(t, mlp);
        assert_eq!(t.layout(), mlp.layout());
        assert_eq!(t.init(3), mlp.init(3));
        let acts: Vec<Option<Activation>> = t
            .ops()
            .unwrap()
            .into_iter()
            .map(|op| match op {
                Op::Dense { activation, .. } => activation,
                other => panic!("{other:?} in an mlp"),
            })
            .collect();
        assert_eq!(acts, [Some(Activation::Tanh), Some(Activation::Tanh), None]);
        // `:relu` spelt out is the plain layer, and so the preset.
        let relu = declare(
            "mlp",
            &["dense:200:relu", "dense:200"],
            InputShape::MNIST,
            10,
        )
        .unwrap();
        assert_eq!(relu, mlp);
        assert_eq!(relu.to_string(), "mlp");
        // Every layer reads back from its display; a mixed cnn keeps its tanh.
        for s in ["dense:7", "dense:7:tanh", "conv3x3:4", "maxpool2"] {
            let l: Layer = s.parse().unwrap();
            assert_eq!(l.to_string(), s);
            assert_eq!(l.to_string().parse::<Layer>().unwrap(), l);
        }
        let c = declare(
            "cnn",
            &["conv3x3:2", "maxpool2", "dense:4:tanh"],
            InputShape::MNIST,
            10,
        )
        .unwrap();
        assert!(c.to_string().contains("dense:4:tanh"), "{c}");
    }

    #[test]
    fn nonsense_declarations_are_refused_by_name() {
        let img = InputShape::MNIST;
        for (kind, layers, input, classes, says) in [
            ("resnet", vec![], img, 10, "unknown model kind 'resnet'"),
            ("mlp", vec!["dense:0"], img, 10, "layer 'dense:0': width"),
            ("mlp", vec!["dense:x"], img, 10, "'x' is not a whole number"),
            (
                "mlp",
                vec!["dense:8:sigmoid"],
                img,
                10,
                "layer 'dense:8:sigmoid': unknown activation 'sigmoid' (expected relu or tanh)",
            ),
            ("mlp", vec!["dense:8:"], img, 10, "unknown activation ''"),
            (
                "mlp",
                vec!["dense:8:tanh:tanh"],
                img,
                10,
                "unknown activation 'tanh:tanh'",
            ),
            (
                "mlp",
                vec!["dense::tanh"],
                img,
                10,
                "'' is not a whole number",
            ),
            (
                "mlp",
                vec!["dense:Tanh"],
                img,
                10,
                "'Tanh' is not a whole number",
            ),
            (
                "mlp",
                vec!["dense:0:tanh"],
                img,
                10,
                "layer 'dense:0:tanh': width",
            ),
            (
                "mlp",
                vec!["lstm:4"],
                img,
                10,
                "layer 'lstm:4': unknown layer",
            ),
            ("mlp", vec!["conv3x3:4"], img, 10, "an mlp has only dense"),
            ("cnn", vec!["conv3x5:4"], img, 10, "only square kernels"),
            ("cnn", vec!["conv4x4:4"], img, 10, "must be odd"),
            ("cnn", vec!["conv3x3:0"], img, 10, "channels must be"),
            ("cnn", vec!["dense:4"], img, 10, "at least one convKxK:N"),
            (
                "cnn",
                vec!["conv3x3:4"],
                InputShape::Flat(20),
                2,
                "a cnn needs image input, and the data is 20 features",
            ),
            (
                "cnn",
                vec!["conv3x3:4", "dense:4", "conv3x3:4"],
                img,
                10,
                "layer 'conv3x3:4' comes after a dense layer",
            ),
            (
                "cnn",
                vec!["conv5x5:4", "maxpool4", "maxpool4", "maxpool4"],
                img,
                10,
                "layer 'maxpool4': the activation here is 1x1, smaller than the pooling window \
                 (the shapes do not fit the 1x28x28 images)",
            ),
            (
                "cnn",
                vec!["conv3x3:4", "maxpool1"],
                img,
                10,
                "pooling window must be",
            ),
            ("logistic", vec!["dense:3"], img, 10, "no hidden layers"),
            (
                "digits-mlp",
                vec!["dense:3"],
                img,
                10,
                "digits-mlp is a preset",
            ),
            ("mlp", vec![], img, 1, "1 classes"),
            (
                "mlp",
                vec!["dense:65536", "dense:65536"],
                img,
                10,
                "more than 100000000 parameters",
            ),
        ] {
            let e = declare(kind, &layers, input, classes)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{kind} {layers:?}: {e}");
            assert!(e.starts_with("model: "), "{e}");
        }
    }

    #[test]
    fn init_is_seeded_and_bounded() {
        let d = ModelSpec::digits_mlp();
        let a = d.init(5);
        assert_eq!(a, d.init(5));
        assert_ne!(a, d.init(6));
        // fc1.bias comes first, fan_in 64 -> bound 1/8.
        assert!(a[..64].iter().all(|v| v.abs() <= 0.125));
    }
}
