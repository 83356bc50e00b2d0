//! Throughput of the aggregation rules (16 deltas of the CNN's 1,663,370 parameters) and of the
//! delta codecs. `cargo bench -p model`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use model::aggregate::{Contribution, Rule, aggregate};
use model::codec::{Compression, decode, encode};
use model::net::ModelSpec;
use model::rng::Rng;
use std::hint::black_box;

fn deltas(k: usize, n: usize) -> Vec<Vec<f32>> {
    let mut rng = Rng::seed(7);
    (0..k)
        .map(|_| (0..n).map(|_| (rng.normal() * 0.01) as f32).collect())
        .collect()
}

fn rules(c: &mut Criterion) {
    let n = ModelSpec::cnn().num_params();
    let xs = deltas(16, n);
    let inputs: Vec<Contribution<'_>> = xs
        .iter()
        .map(|d| Contribution {
            delta: d,
            samples: 100,
        })
        .collect();
    let mut g = c.benchmark_group("aggregate_16x1.66M");
    g.sample_size(10);
    // Throughput in input parameters (16 x n floats read).
    g.throughput(Throughput::Elements((16 * n) as u64));
    for rule in [
        Rule::Mean,
        Rule::Median,
        Rule::TrimmedMean(0.2),
        Rule::MultiKrum { f: 4, m: 8 },
        Rule::CenteredClip { tau: 1.0, iters: 3 },
    ] {
        g.bench_function(rule.to_string(), |b| {
            b.iter(|| aggregate(black_box(&rule), black_box(&inputs)))
        });
    }
    g.finish();
}

fn codecs(c: &mut Criterion) {
    let n = ModelSpec::cnn().num_params();
    let x = deltas(1, n).remove(0);
    let mut g = c.benchmark_group("codec_1.66M");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));
    for comp in [
        Compression::Dense,
        Compression::Int8,
        Compression::TopK(0.1),
        Compression::TopKInt8(0.1),
        Compression::TopKInt8(0.01),
    ] {
        let bytes = encode(comp, &x);
        g.bench_function(format!("encode/{comp}"), |b| {
            b.iter(|| encode(black_box(comp), black_box(&x)))
        });
        g.bench_function(format!("decode/{comp}"), |b| {
            b.iter(|| decode(black_box(&bytes), n))
        });
    }
    g.finish();
}

criterion_group!(benches, rules, codecs);
criterion_main!(benches);
