//! Splitting text documents (speaking roles) over nodes: by role, LEAF's natural non-IID split,
//! where each role's lines belong to one node, or IID, where fixed-size chunks of all the text are
//! shuffled and dealt. Both first cut every document into its training head and validation tail
//! ([`crate::text::Doc::split`]), so the union of the nodes' validation text is the same for every
//! partition and for a centralized run.

use crate::error::{Error, Result, parse_err};
use crate::rng::Rng;
use crate::text::Doc;

/// How text is split over nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TextPartition {
    /// Each role (document) goes whole to one node; roles are dealt largest first to the node with
    /// the fewest characters so far, which balances nodes by character count without a seed.
    ByRole,
    /// All training text cut into [`IID_CHUNK`]-character chunks, shuffled with the seed and dealt
    /// round robin (validation text likewise).
    Iid,
}

/// Characters per chunk in the IID split (16 contexts of 64).
pub const IID_CHUNK: usize = 1024;

impl std::str::FromStr for TextPartition {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "by-role" | "role" => Ok(Self::ByRole),
            "iid" => Ok(Self::Iid),
            _ => Err(parse_err("text partition", s, "expected by-role or iid")),
        }
    }
}

impl std::fmt::Display for TextPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ByRole => "by-role",
            Self::Iid => "iid",
        })
    }
}

/// One node's text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeText {
    /// Names of the roles dealt to this node (by role), or the number of chunks as `chunks:N` (IID).
    pub parts: Vec<String>,
    /// Training text: its roles' training heads (or its chunks) in order, concatenated.
    pub train: String,
    /// Validation text, likewise.
    pub val: String,
}

impl NodeText {
    /// Training characters (not bytes).
    pub fn train_chars(&self) -> usize {
        self.train.chars().count()
    }

    /// Validation characters.
    pub fn val_chars(&self) -> usize {
        self.val.chars().count()
    }
}

/// Deals `docs` over `nodes` nodes (at least one). Every document's text goes to exactly one node
/// (by role) or is spread in chunks (IID); `val_fraction` of each document's tail is validation.
/// The result depends only on the documents, `nodes`, `how` and `seed` (IID only).
pub fn partition_text(
    docs: &[Doc],
    nodes: usize,
    how: TextPartition,
    val_fraction: f64,
    seed: u64,
) -> Vec<NodeText> {
    let nodes = nodes.max(1);
    let mut out = vec![NodeText::default(); nodes];
    match how {
        TextPartition::ByRole => {
            let sizes: Vec<usize> = docs.iter().map(|d| d.text.chars().count()).collect();
            for (node, idx) in deal_by_size(&sizes, nodes).into_iter().enumerate() {
                for i in idx {
                    let (train, val) = docs[i].split(val_fraction);
                    out[node].parts.push(docs[i].name.clone());
                    out[node].train.push_str(train);
                    out[node].val.push_str(val);
                }
            }
        }
        TextPartition::Iid => {
            let mut rng = Rng::derive(seed, 0x7E47);
            let (mut train, mut val) = (String::new(), String::new());
            for d in docs {
                let (t, v) = d.split(val_fraction);
                train.push_str(t);
                val.push_str(v);
            }
            let counts = deal_chunks(&train, &mut out, &mut rng, |n| &mut n.train);
            deal_chunks(&val, &mut out, &mut rng, |n| &mut n.val);
            for (n, c) in out.iter_mut().zip(counts) {
                n.parts.push(format!("chunks:{c}"));
            }
        }
    }
    out
}

/// Indices of `sizes` per node: largest first (ties by index) to the least loaded node (ties by
/// node index). Within a node, indices stay in increasing order.
pub fn deal_by_size(sizes: &[usize], nodes: usize) -> Vec<Vec<usize>> {
    let nodes = nodes.max(1);
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| sizes[b].cmp(&sizes[a]).then(a.cmp(&b)));
    let mut load = vec![0usize; nodes];
    let mut out = vec![Vec::new(); nodes];
    for i in order {
        let (node, _) = load
            .iter()
            .enumerate()
            .min_by_key(|&(n, l)| (*l, n))
            .unwrap_or((0, &0));
        load[node] += sizes[i];
        out[node].push(i);
    }
    for v in &mut out {
        v.sort_unstable();
    }
    out
}

/// Cuts `text` into [`IID_CHUNK`]-character chunks, shuffles them and appends them round robin to
/// the field `pick` selects; returns the chunks per node.
fn deal_chunks(
    text: &str,
    out: &mut [NodeText],
    rng: &mut Rng,
    pick: impl Fn(&mut NodeText) -> &mut String,
) -> Vec<usize> {
    let chars: Vec<char> = text.chars().collect();
    let mut chunks: Vec<&[char]> = chars.chunks(IID_CHUNK).collect();
    rng.shuffle(&mut chunks);
    let mut counts = vec![0; out.len()];
    for (i, c) in chunks.into_iter().enumerate() {
        let node = i % out.len();
        pick(&mut out[node]).extend(c.iter());
        counts[node] += 1;
    }
    counts
}

/// One line per node: roles (or chunks), training and validation characters.
pub fn describe(parts: &[NodeText]) -> String {
    let mut s = String::new();
    let total: usize = parts.iter().map(NodeText::train_chars).sum();
    for (i, p) in parts.iter().enumerate() {
        let what = match p.parts.first() {
            Some(c) if c.starts_with("chunks:") => c.replace("chunks:", "") + " chunks",
            _ => format!("{} roles", p.parts.len()),
        };
        let train = p.train_chars();
        s.push_str(&format!(
            "node {i:>3}: {what:>12}, {train:>9} train chars ({:>5.1}%), {:>8} validation chars",
            100.0 * train as f64 / total.max(1) as f64,
            p.val_chars()
        ));
        if p.parts.len() <= 3 && what.ends_with("roles") {
            s.push_str(&format!(" ({})", p.parts.join(", ")));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs() -> Vec<Doc> {
        [
            ("p/A", 100),
            ("p/B", 40),
            ("p/C", 35),
            ("p/D", 30),
            ("q/E", 5),
        ]
        .iter()
        .map(|&(n, len)| Doc {
            name: n.into(),
            text: "x".repeat(len),
        })
        .collect()
    }

    #[test]
    fn roles_are_dealt_whole_and_balanced() {
        let d = docs();
        let parts = partition_text(&d, 2, TextPartition::ByRole, 0.1, 0);
        // A (100) to node 0; B, C, D to node 1 (40, 75, 105 > 100), E to node 0.
        assert_eq!(parts[0].parts, ["p/A", "q/E"]);
        assert_eq!(parts[1].parts, ["p/B", "p/C", "p/D"]);
        // Each role's last 10% is validation: A 90/10, E 5/0 (floor), B 36/4, C 32/3, D 27/3.
        assert_eq!((parts[0].train_chars(), parts[0].val_chars()), (95, 10));
        assert_eq!((parts[1].train_chars(), parts[1].val_chars()), (95, 10));
        assert_eq!(
            deal_by_size(&[1, 1, 1], 5),
            [vec![0], vec![1], vec![2], vec![], vec![]]
        );
    }

    #[test]
    fn iid_covers_every_character_once_and_is_seeded() {
        let d: Vec<Doc> = (0..3)
            .map(|i| Doc {
                name: format!("r{i}"),
                text: (0..3000)
                    .map(|j| char::from(b'a' + ((i * 7 + j) % 26) as u8))
                    .collect(),
            })
            .collect();
        let parts = partition_text(&d, 4, TextPartition::Iid, 0.1, 9);
        let train: usize = parts.iter().map(NodeText::train_chars).sum();
        let val: usize = parts.iter().map(NodeText::val_chars).sum();
        assert_eq!((train, val), (3 * 2700, 3 * 300));
        // 8100 train chars are 7 chunks of 1024 and one of 932: two per node.
        assert!(
            parts
                .iter()
                .all(|p| [1956, 2048].contains(&p.train_chars()))
        );
        assert_eq!(parts, partition_text(&d, 4, TextPartition::Iid, 0.1, 9));
        assert_ne!(parts, partition_text(&d, 4, TextPartition::Iid, 0.1, 10));
        // Same validation text as the role split, in some order.
        let by_role = partition_text(&d, 1, TextPartition::ByRole, 0.1, 0);
        let mut a: Vec<char> = by_role[0].val.chars().collect();
        let mut b: Vec<char> = parts.iter().flat_map(|p| p.val.chars()).collect();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
        assert!(describe(&parts).contains("chunks"));
        assert!("by-role".parse::<TextPartition>().is_ok());
        assert!("dirichlet:1".parse::<TextPartition>().is_err());
    }
}
