//! Models of one's own in `cohort`'s commands: a binary built on this library registers its
//! [`CustomModel`] types by name, and the genesis `[model] kind = "custom:NAME"` picks one.
//!
//! ```ignore
//! fn main() -> std::process::ExitCode {
//!     node::Cohort::new().with_model::<SkipNet>("skipnet").main()
//! }
//! ```
//!
//! `simulate`, `centralized`, `genesis`, `testnet` and `run` then take `--model custom:skipnet`;
//! `testnet` starts its nodes from the same binary, so they know the same models. Every node of
//! a network needs the registration: the genesis (and so its hash and the chain id) holds the
//! name, and a binary that does not know the name refuses the genesis with an error saying so.
//!
//! The registry is filled once, before the command line is parsed, and only read afterwards.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use model::custom::CustomModel;
use model::net::{InputShape, ModelSpec};

/// The prefix of a registered model's kind in the genesis and on the command line.
pub const PREFIX: &str = "custom:";

/// Builds a registered model's spec for an input shape and a class count.
type Declare = Arc<dyn Fn(InputShape, usize) -> model::Result<ModelSpec> + Send + Sync>;

/// The models this binary registered, by name; set once by [`Cohort::main`].
static REGISTRY: OnceLock<BTreeMap<String, Declare>> = OnceLock::new();

/// `cohort`'s command line with models of one's own registered: the library's entry point.
#[derive(Default)]
pub struct Cohort {
    /// Registered models by name.
    models: BTreeMap<String, Declare>,
}

impl Cohort {
    /// `cohort` with no model of its own (the `cohort` binary).
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `M` as `custom:NAME` (a later registration of the same name replaces it).
    pub fn with_model<M: CustomModel + 'static>(mut self, name: &str) -> Self {
        let owned = name.to_string();
        let declare: Declare =
            Arc::new(move |input, classes| ModelSpec::custom::<M>(&owned, input, classes));
        self.models.insert(name.to_string(), declare);
        self
    }

    /// Installs the registry, parses the process's command line and runs the command, as the
    /// `cohort` binary does.
    pub fn main(self) -> ExitCode {
        self.main_from(std::env::args_os())
    }

    /// [`Cohort::main`] on the given arguments (the program name first).
    pub fn main_from<I, T>(self, args: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        if REGISTRY.set(self.models).is_err() {
            eprintln!("error: cohort's models were registered twice in one process");
            return ExitCode::FAILURE;
        }
        crate::cli::main(args)
    }
}

/// The names this binary registered.
fn registered() -> Vec<&'static str> {
    REGISTRY
        .get()
        .map(|r| r.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

/// [`ModelSpec::declare`], plus `custom:NAME` for a registered model (which takes no `layers`).
pub fn declare(
    kind: &str,
    layers: &[String],
    input: InputShape,
    classes: usize,
) -> anyhow::Result<ModelSpec> {
    let Some(name) = kind.strip_prefix(PREFIX) else {
        return Ok(ModelSpec::declare(kind, layers, input, classes)?);
    };
    let Some(declare) = REGISTRY.get().and_then(|r| r.get(name)) else {
        let known = registered();
        let known = if known.is_empty() {
            "it registers none; build a binary with node::Cohort::with_model".to_string()
        } else {
            format!("it registers {}", known.join(", "))
        };
        anyhow::bail!("this binary does not know the custom model '{name}' ({known})");
    };
    if !layers.is_empty() {
        anyhow::bail!("custom model '{name}' declares its own layers: leave layers empty");
    }
    Ok(declare(input, classes)?)
}

#[cfg(test)]
mod tests {
    use candle_core::Tensor;
    use candle_nn::{Linear, Module, VarBuilder, linear};
    use consensus::ValidatorId;

    use super::*;

    /// Softmax regression as a custom model.
    struct Tiny(Linear);

    impl CustomModel for Tiny {
        fn build(vb: VarBuilder, input: usize, classes: usize) -> candle_core::Result<Self> {
            Ok(Tiny(linear(input, classes, vb.pp("out"))?))
        }
        fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
            self.0.forward(xs)
        }
    }

    /// This test process's registry: `tiny` and `tiny2`, the same type under two names.
    fn install() {
        let models = Cohort::new()
            .with_model::<Tiny>("tiny")
            .with_model::<Tiny>("tiny2")
            .models;
        // Another test of this process may have set it already, with the same models.
        let _ = REGISTRY.set(models);
    }

    #[test]
    fn a_genesis_names_a_registered_model_and_its_hash_covers_the_name() {
        install();
        let mut g = crate::genesis::demo("custom", &[ValidatorId([1; 32])]);
        g.model.kind = "custom:tiny".into();
        let a = g.clone().check().expect("a registered model");
        assert_eq!(a.model.custom_recipe().map(|c| c.name()), Some("tiny"));
        assert_eq!(a.model.num_params(), 64 * 10 + 10);
        g.model.kind = "custom:tiny2".into();
        let b = g.clone().check().expect("another name of it");
        assert_eq!(a.model.num_params(), b.model.num_params());
        assert_ne!(
            a.hash, b.hash,
            "the same network under another name is another genesis"
        );
        g.model.kind = "custom:nope".into();
        let e = format!("{:#}", g.clone().check().expect_err("unknown name"));
        assert!(
            e.contains("does not know the custom model 'nope' (it registers tiny, tiny2)"),
            "{e}"
        );
        g.model.kind = "custom:tiny".into();
        g.model.layers = vec!["dense:8".into()];
        let e = format!("{:#}", g.check().expect_err("layers"));
        assert!(
            e.contains("custom model 'tiny' declares its own layers"),
            "{e}"
        );
        let plain = declare("mlp", &[], InputShape::Flat(64), 10).expect("a preset");
        assert!(plain.custom_recipe().is_none());
    }
}
