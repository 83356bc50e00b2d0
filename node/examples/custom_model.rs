//! A model of one's own in a few lines: a candle-nn network with a tanh hidden layer and a skip
//! connection, registered as `custom:skipnet` in a binary that is otherwise `cohort`. Without
//! arguments it runs a 4-node testnet (four `run` processes of this same binary, so every node
//! knows the model) on the embedded 8x8 digits and checks that every node ends with the same
//! model hash; with arguments it is the `cohort` command line (`simulate`, `genesis`, `run`, ...).
//!
//! ```sh
//! cargo run --release -p node --example custom_model
//! cargo run --release -p node --example custom_model -- simulate --model custom:skipnet --rounds 20
//! ```

use std::ffi::OsString;
use std::process::ExitCode;

use candle_core::Tensor;
use candle_nn::{Linear, Module, VarBuilder, linear};
use model::custom::CustomModel;

/// `logits = fc2(tanh(fc1(x))) + skip(x)`.
struct SkipNet {
    fc1: Linear,
    fc2: Linear,
    skip: Linear,
}

impl CustomModel for SkipNet {
    fn build(vb: VarBuilder, input: usize, classes: usize) -> candle_core::Result<Self> {
        Ok(SkipNet {
            fc1: linear(input, 48, vb.pp("fc1"))?,
            fc2: linear(48, classes, vb.pp("fc2"))?,
            skip: linear(input, classes, vb.pp("skip"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(xs)?.tanh()?)? + self.skip.forward(xs)?
    }
}

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    if args.len() == 1 {
        let demo = [
            "testnet",
            "--nodes",
            "4",
            "--model",
            "custom:skipnet",
            "--dataset",
            "digits",
            "--rounds",
            "20",
            "--local-epochs",
            "1",
            "--batch",
            "16",
            "--optimizer",
            "sgd:0.05,0.9",
            "--rule",
            "mean",
            "--eval-every",
            "5",
        ];
        args.extend(demo.map(OsString::from));
    }
    node::Cohort::new()
        .with_model::<SkipNet>("skipnet")
        .main_from(args)
}
