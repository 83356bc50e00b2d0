//! The noise multiplier sigma for a target epsilon, by the crate's RDP accountant
//! (`Accountant::noise_for_epsilon`): `cargo run --example dp_sigma -- Q STEPS DELTA EPS...`,
//! e.g. `-- 0.04 800 1e-5 0.5 1 2 4 8`. Prints one `epsilon sigma achieved-epsilon` line each.

use model::dp::Accountant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        return Err("usage: dp_sigma Q STEPS DELTA EPS...".into());
    }
    let q: f64 = args[0].parse()?;
    let steps: u64 = args[1].parse()?;
    let delta: f64 = args[2].parse()?;
    for e in &args[3..] {
        let eps: f64 = e.parse()?;
        let sigma = Accountant::noise_for_epsilon(q, steps, eps, delta)
            .ok_or_else(|| format!("epsilon {eps} is out of reach"))?;
        let got = Accountant {
            noise: sigma,
            sampling_rate: q,
        }
        .epsilon(steps, delta)
        .0;
        println!("epsilon {eps}  sigma {sigma:.4}  achieved {got:.4}");
    }
    Ok(())
}
