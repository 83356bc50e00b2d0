//! A model of one's own in a few lines: a candle-nn network with a tanh hidden layer and a skip
//! connection, trained by 4 simulated nodes on the embedded 8x8 digits (Dirichlet 0.5 split) on
//! the networked node's per-round math (`model::sim`).
//!
//! ```sh
//! cargo run -p model --example custom_model
//! ```

use candle_core::Tensor;
use candle_nn::{Linear, Module, VarBuilder, linear};
use model::aggregate::{Aggregator, Rule, ServerOpt};
use model::codec::Compression;
use model::custom::CustomModel;
use model::net::{InputShape, ModelSpec};
use model::partition::Partition;
use model::sim::{SimConfig, Simulation};
use model::train::{Optimizer, TrainConfig, Work};

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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec = ModelSpec::custom::<SkipNet>("skipnet", InputShape::Flat(64), 10)?;
    let names: Vec<String> = spec.layout().into_iter().map(|p| p.name).collect();
    println!("{spec}: {} parameters {names:?}", spec.num_params());
    let split = model::data::digits()?;
    let cfg = SimConfig {
        model: spec,
        nodes: 4,
        partition: Partition::Dirichlet(0.5),
        train: TrainConfig {
            work: Work::Epochs(1),
            batch: 16,
            optimizer: Optimizer::Sgd {
                lr: 0.05,
                momentum: 0.9,
            },
            prox_mu: 0.0,
            dp_sgd: None,
        },
        rule: Aggregator::from(Rule::Mean),
        server: ServerOpt {
            lr: 1.0,
            momentum: 0.0,
            nesterov: false,
        },
        compression: Compression::Dense,
        error_feedback: true,
        dp: None,
        byzantine: None,
        secure_aggregation: None,
        seed: 1,
        eval_every: 5,
    };
    let mut sim = Simulation::new(cfg, &split)?;
    for _ in 0..20 {
        let r = sim.step()?;
        if let Some(acc) = r.accuracy {
            println!("round {:>2}  accuracy {:.2}%", r.round, acc * 100.0);
        }
    }
    let (acc, _) = sim.evaluate()?;
    println!(
        "final accuracy {:.2}%, model hash {}",
        acc * 100.0,
        hex::encode(model::params::hash_params(sim.params()))
    );
    Ok(())
}
