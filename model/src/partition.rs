//! Seeded partitions of a training set over `n` nodes: IID, Dirichlet over labels (Hsu et al. 2019)
//! and McMahan et al.'s pathological shards.

use crate::data::Dataset;
use crate::error::{Error, Result, parse_err};
use crate::rng::Rng;

/// How the training set is split over nodes.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Partition {
    /// Uniformly shuffled, equal shares.
    Iid,
    /// For every label, its samples are split over nodes by proportions drawn from Dirichlet(alpha).
    /// Smaller alpha is more skewed (0.5 is the common "non-IID" setting).
    Dirichlet(f64),
    /// Sort by label, cut into `shards_per_node * n` equal shards, give each node `shards_per_node`
    /// at random (McMahan et al. 2017 use 2).
    Shards(usize),
}

impl std::str::FromStr for Partition {
    type Err = Error;
    /// `iid`, `dirichlet:ALPHA`, `shards` or `shards:K`.
    fn from_str(s: &str) -> Result<Self> {
        let (name, arg) = s.split_once(':').unwrap_or((s, ""));
        match name {
            "iid" if arg.is_empty() => Ok(Self::Iid),
            "dirichlet" => {
                let a: f64 = arg
                    .parse()
                    .map_err(|_| parse_err("partition", s, "expected dirichlet:ALPHA"))?;
                if !(a > 0.0 && a.is_finite()) {
                    return Err(parse_err("partition", s, "alpha must be > 0"));
                }
                Ok(Self::Dirichlet(a))
            }
            "shards" | "pathological" => {
                let k = if arg.is_empty() {
                    2
                } else {
                    arg.parse()
                        .map_err(|_| parse_err("partition", s, "expected shards:K"))?
                };
                if k == 0 {
                    return Err(parse_err("partition", s, "K must be >= 1"));
                }
                Ok(Self::Shards(k))
            }
            _ => Err(parse_err(
                "partition",
                s,
                "expected iid, dirichlet:ALPHA or shards[:K]",
            )),
        }
    }
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Iid => write!(f, "iid"),
            Self::Dirichlet(a) => write!(f, "dirichlet:{a}"),
            Self::Shards(k) => write!(f, "shards:{k}"),
        }
    }
}

/// Splits the indices of `data` over `nodes` nodes. Every sample goes to exactly one node; the
/// result only depends on the labels, `nodes`, the partition and `seed`. Every node gets at least
/// one sample when there are at least as many samples as nodes.
pub fn partition(data: &Dataset, nodes: usize, how: Partition, seed: u64) -> Vec<Vec<usize>> {
    partition_labels(&data.y, nodes, how, seed)
}

/// [`partition`] from the labels alone (a node that streams its data cuts its shard before it
/// reads any image): the same indices for the same labels, `nodes`, partition and `seed`.
pub fn partition_labels(labels: &[u8], nodes: usize, how: Partition, seed: u64) -> Vec<Vec<usize>> {
    let data = Labels(labels);
    let mut rng = Rng::derive(seed, 0x9A27);
    let nodes = nodes.max(1);
    let mut out = vec![Vec::new(); nodes];
    match how {
        Partition::Iid => {
            let mut idx: Vec<usize> = (0..data.len()).collect();
            rng.shuffle(&mut idx);
            for (i, s) in idx.into_iter().enumerate() {
                out[i % nodes].push(s);
            }
        }
        Partition::Dirichlet(alpha) => {
            // Every label present (at least the ten of the built-in data sets, so that their
            // splits stay what they were).
            let classes = data.num_labels();
            for label in 0..=u8::try_from(classes - 1).unwrap_or(u8::MAX) {
                let mut idx: Vec<usize> = (0..data.len()).filter(|&i| data.0[i] == label).collect();
                rng.shuffle(&mut idx);
                let p = rng.dirichlet(alpha, nodes);
                // Cumulative cut points, exact integer arithmetic at the end.
                let mut acc = 0.0;
                let mut start = 0;
                for (node, pk) in p.iter().enumerate() {
                    acc += pk;
                    let end = if node + 1 == nodes {
                        idx.len()
                    } else {
                        ((acc * idx.len() as f64).round() as usize).clamp(start, idx.len())
                    };
                    out[node].extend_from_slice(&idx[start..end]);
                    start = end;
                }
            }
        }
        Partition::Shards(per_node) => {
            let mut idx: Vec<usize> = (0..data.len()).collect();
            // Stable sort by label keeps the order deterministic.
            idx.sort_by_key(|&i| data.0[i]);
            let shards = nodes * per_node;
            let mut order: Vec<usize> = (0..shards).collect();
            rng.shuffle(&mut order);
            for (k, shard) in order.into_iter().enumerate() {
                let lo = shard * idx.len() / shards;
                let hi = (shard + 1) * idx.len() / shards;
                out[k / per_node].extend_from_slice(&idx[lo..hi]);
            }
        }
    }
    // No node is left empty: move one sample from the largest node (deterministic).
    if data.len() >= nodes {
        for i in 0..nodes {
            if out[i].is_empty() {
                let donor = (0..nodes)
                    .max_by_key(|&j| (out[j].len(), usize::MAX - j))
                    .unwrap_or(0);
                if let Some(s) = out[donor].pop() {
                    out[i].push(s);
                }
            }
        }
    }
    for part in &mut out {
        part.sort_unstable();
    }
    out
}

/// The labels [`partition_labels`] splits by.
struct Labels<'a>(&'a [u8]);

impl Labels<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn num_labels(&self) -> usize {
        crate::data::num_labels(self.0)
    }
}

/// One line per node with its sample count and per-label counts, for printing.
pub fn describe(data: &Dataset, parts: &[Vec<usize>]) -> String {
    let classes = data.num_labels();
    let mut s = format!("node  samples  labels 0..{}\n", classes - 1);
    for (i, p) in parts.iter().enumerate() {
        let mut c = vec![0usize; classes];
        for &j in p {
            if let Some(n) = c.get_mut(usize::from(data.y[j])) {
                *n += 1;
            }
        }
        let counts: Vec<String> = c.iter().map(|v| format!("{v:>5}")).collect();
        s.push_str(&format!("{i:>4}  {:>7}  {}\n", p.len(), counts.join("")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize) -> Dataset {
        Dataset::dense(vec![0.0; n], (0..n).map(|i| (i % 10) as u8).collect(), 1)
    }

    fn check_cover(parts: &[Vec<usize>], n: usize) {
        let mut all: Vec<usize> = parts.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>());
    }

    #[test]
    fn iid_is_balanced_and_seeded() {
        let d = toy(1000);
        let p = partition(&d, 8, Partition::Iid, 1);
        check_cover(&p, 1000);
        assert!(p.iter().all(|x| x.len() == 125));
        assert_eq!(p, partition(&d, 8, Partition::Iid, 1));
        assert_ne!(p, partition(&d, 8, Partition::Iid, 2));
    }

    #[test]
    fn dirichlet_is_skewed_and_covers() {
        let d = toy(5000);
        let p = partition(&d, 8, Partition::Dirichlet(0.1), 3);
        check_cover(&p, 5000);
        // With alpha = 0.1 most nodes are dominated by few labels.
        let mut max_share = 0.0f64;
        for part in &p {
            let mut c = [0usize; 10];
            for &j in part {
                c[d.y[j] as usize] += 1;
            }
            let m = *c.iter().max().unwrap() as f64 / part.len().max(1) as f64;
            max_share = max_share.max(m);
        }
        assert!(max_share > 0.5, "max label share {max_share}");
        assert!(p.iter().all(|x| !x.is_empty()));
    }

    #[test]
    fn shards_give_few_labels_per_node() {
        let d = toy(1000);
        let p = partition(&d, 10, Partition::Shards(2), 4);
        check_cover(&p, 1000);
        for part in &p {
            assert_eq!(part.len(), 100);
            let mut labels: Vec<u8> = part.iter().map(|&j| d.y[j]).collect();
            labels.dedup();
            labels.sort_unstable();
            labels.dedup();
            assert!(labels.len() <= 2, "{labels:?}");
        }
        assert!(describe(&d, &p).lines().count() == 11);
    }

    #[test]
    fn parses() {
        assert_eq!("iid".parse::<Partition>().unwrap(), Partition::Iid);
        assert_eq!(
            "dirichlet:0.5".parse::<Partition>().unwrap(),
            Partition::Dirichlet(0.5)
        );
        assert_eq!("shards".parse::<Partition>().unwrap(), Partition::Shards(2));
        assert!("dirichlet:-1".parse::<Partition>().is_err());
        assert!("dirichlet".parse::<Partition>().is_err());
        assert!("zipf".parse::<Partition>().is_err());
    }
}
