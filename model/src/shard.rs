//! A node's shard of a built-in data set, cut while its IDX image file streams past: the node
//! holds only its own images (a quarter of MNIST's 47 MB training file on four nodes), never the
//! whole decompressed file.
//!
//! The cut is the one [`crate::partition::partition`] makes over the whole set (same samples,
//! same order): the partition depends only on the labels, which are read first.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::compact::Features;
use crate::data::{
    Dataset, DatasetKind, Split, data_err, load_idx_pair, parse_idx_labels, parse_idx3_header,
    read_maybe_gz,
};
use crate::error::{Error, Result};
use crate::net::{Model, ModelSpec};
use crate::partition::{Partition, partition, partition_labels};
use candle_core::Device;

/// The built-in test set's file names in a data directory (raw or `.gz`).
const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

/// Shard `shard` of `shards` of `kind`'s training set (split by `how` with `seed`) and the whole
/// test set. The same as `load(kind, dir)` followed by `train.subset(&partition(..)[shard])`,
/// but an IDX training file is streamed and only this shard's images are kept.
pub fn load_shard(
    kind: DatasetKind,
    dir: Option<&Path>,
    shards: usize,
    shard: usize,
    how: Partition,
    seed: u64,
) -> Result<Split> {
    let (train, test) = load_node_shard(kind, dir, shards, shard, how, seed)?;
    let test = match test {
        EvalSet::Memory(d) => d,
        EvalSet::Idx(s) => load_idx_pair(&s.dir, TEST_IMAGES, TEST_LABELS)?,
    };
    Ok(Split { train, test })
}

/// [`load_shard`] for a node: the test set of an IDX directory is not loaded but read again in
/// chunks at each evaluation ([`IdxEvalSet`]).
pub fn load_node_shard(
    kind: DatasetKind,
    dir: Option<&Path>,
    shards: usize,
    shard: usize,
    how: Partition,
    seed: u64,
) -> Result<(Dataset, EvalSet)> {
    let pick = |parts: Vec<Vec<usize>>| {
        parts
            .into_iter()
            .nth(shard)
            .ok_or_else(|| Error::Dataset(format!("shard {shard} of {shards}: no such shard")))
    };
    let dir = match (kind, dir) {
        (DatasetKind::Digits, _) => {
            let s = crate::data::digits()?;
            let idx = pick(partition(&s.train, shards, how, seed))?;
            return Ok((s.train.subset(&idx), EvalSet::Memory(s.test)));
        }
        (_, Some(dir)) => dir,
        (_, None) => {
            let s = crate::data::load(kind, None)?;
            return Ok((s.train, EvalSet::Memory(s.test)));
        }
    };
    if !dir.is_dir() {
        return Err(data_err(dir, "data directory not found"));
    }
    let images = IdxImages::open(dir, "train-images-idx3-ubyte")?;
    let (lpath, lbytes) = read_maybe_gz(dir, "train-labels-idx1-ubyte")?;
    let y = parse_idx_labels(&lbytes, &lpath)?;
    drop(lbytes);
    images.check_labels(y.len(), &lpath)?;
    let idx = pick(partition_labels(&y, shards, how, seed))?;
    let features = images.rows * images.cols;
    let pixels = images.take(&idx)?;
    let train = Dataset {
        x: Features::Pixels(pixels),
        y: idx.iter().map(|&i| y[i]).collect(),
        features,
    };
    Ok((train, EvalSet::Idx(IdxEvalSet::open(dir)?)))
}

/// An IDX test set read again, a chunk at a time, at every evaluation: the node holds its labels
/// (10 kB for MNIST) but never its images (7.8 MB, before this the largest block of a 2NN node's
/// heap: BENCHMARKS.md section 8). A pass over MNIST's test file costs a read of 7.8 MB from the
/// page cache, far less than the forward passes it feeds.
#[derive(Debug, Clone)]
pub struct IdxEvalSet {
    dir: PathBuf,
    labels: Vec<u8>,
    features: usize,
}

impl IdxEvalSet {
    /// Opens the test files of `dir`: reads the labels and checks that the image file's header
    /// agrees with them.
    pub fn open(dir: &Path) -> Result<Self> {
        let images = IdxImages::open(dir, TEST_IMAGES)?;
        let (lpath, lbytes) = read_maybe_gz(dir, TEST_LABELS)?;
        let labels = parse_idx_labels(&lbytes, &lpath)?;
        images.check_labels(labels.len(), &lpath)?;
        Ok(IdxEvalSet {
            dir: dir.to_path_buf(),
            labels,
            features: images.rows * images.cols,
        })
    }

    /// Calls `f` on consecutive chunks of at most `rows` samples, in file order, reading the
    /// image file once. Fails, naming the file, if it no longer matches what [`Self::open`] saw.
    pub fn for_each_chunk(
        &self,
        rows: usize,
        mut f: impl FnMut(&Dataset) -> Result<()>,
    ) -> Result<()> {
        let mut images = IdxImages::open(&self.dir, TEST_IMAGES)?;
        let k = images.rows * images.cols;
        if images.count != self.labels.len() || k != self.features {
            return Err(data_err(
                &images.path,
                "changed since it was opened (image count or size)",
            ));
        }
        for labels in self.labels.chunks(rows.max(1)) {
            let mut pixels = vec![0u8; labels.len() * k];
            images
                .body
                .read_exact(&mut pixels)
                .map_err(|e| read_err(&images.path, e))?;
            f(&Dataset {
                x: Features::Pixels(pixels),
                y: labels.to_vec(),
                features: k,
            })?;
        }
        Ok(())
    }
}

/// The data a node evaluates the committed model on.
#[derive(Debug, Clone)]
pub enum EvalSet {
    /// Held in memory.
    Memory(Dataset),
    /// An IDX test file read at each evaluation.
    Idx(IdxEvalSet),
}

impl EvalSet {
    /// Samples.
    pub fn len(&self) -> usize {
        self.labels().len()
    }

    /// True when there is no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Features per sample.
    pub fn features(&self) -> usize {
        match self {
            EvalSet::Memory(d) => d.features,
            EvalSet::Idx(s) => s.features,
        }
    }

    /// Every sample's label.
    pub fn labels(&self) -> &[u8] {
        match self {
            EvalSet::Memory(d) => &d.y,
            EvalSet::Idx(s) => &s.labels,
        }
    }

    /// Test accuracy and mean loss of flat parameters of `kind`, as
    /// [`crate::train::evaluate_params`] computes them on the whole set at once.
    pub fn evaluate_params(&self, kind: &ModelSpec, params: &[f32]) -> Result<(f32, f32)> {
        let set = match self {
            EvalSet::Memory(d) => return crate::train::evaluate_params(kind, params, d),
            EvalSet::Idx(s) => s,
        };
        if set.labels.is_empty() {
            return Ok((0.0, 0.0));
        }
        let model = Model::new(kind, params, &Device::Cpu)?;
        let (mut correct, mut loss) = (0usize, 0.0f64);
        set.for_each_chunk(crate::train::EVAL_CHUNK, |chunk| {
            let (c, l) = crate::train::evaluate_sums(&model, chunk)?;
            correct += c;
            loss += l;
            Ok(())
        })?;
        let n = set.labels.len();
        Ok((correct as f32 / n as f32, (loss / n as f64) as f32))
    }
}

/// An IDX3 image file (raw or `.gz`) opened for one pass, its header checked.
struct IdxImages {
    /// The file read (for errors).
    path: PathBuf,
    /// The bytes after the header, decompressed as they are read.
    body: Box<dyn Read>,
    /// Images the header announces.
    count: usize,
    /// Image height.
    rows: usize,
    /// Image width.
    cols: usize,
}

impl IdxImages {
    /// Opens `name` or `name.gz` in `dir` and checks its header.
    fn open(dir: &Path, name: &str) -> Result<Self> {
        let raw = dir.join(name);
        let gz = dir.join(format!("{name}.gz"));
        let (path, compressed) = if raw.is_file() {
            (raw, false)
        } else if gz.is_file() {
            (gz, true)
        } else {
            return Err(data_err(&raw, "not found (nor with .gz)"));
        };
        let file = File::open(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let mut body: Box<dyn Read> = if compressed {
            Box::new(flate2::read::GzDecoder::new(BufReader::new(file)))
        } else {
            Box::new(BufReader::new(file))
        };
        let mut head = Vec::with_capacity(16);
        (&mut body)
            .take(16)
            .read_to_end(&mut head)
            .map_err(|e| read_err(&path, e))?;
        let (count, rows, cols) = parse_idx3_header(&head, &path)?;
        Ok(IdxImages {
            path,
            body,
            count,
            rows,
            cols,
        })
    }

    /// An error naming the label file `lpath` unless it holds one label per image.
    fn check_labels(&self, labels: usize, lpath: &Path) -> Result<()> {
        if labels == self.count {
            return Ok(());
        }
        Err(data_err(
            lpath,
            format!(
                "{labels} labels but {} has {} images",
                self.path.display(),
                self.count
            ),
        ))
    }

    /// Reads the whole file and returns the images at `indices`, in that order (an index may
    /// repeat), row-major. The file must hold exactly the images its header announces.
    fn take(mut self, indices: &[usize]) -> Result<Vec<u8>> {
        let (n, k) = (self.count, self.rows * self.cols);
        if let Some(&bad) = indices.iter().find(|&&i| i >= n) {
            return Err(data_err(
                &self.path,
                format!("image {bad} asked for but the file holds {n}"),
            ));
        }
        let len = indices
            .len()
            .checked_mul(k)
            .ok_or_else(|| data_err(&self.path, "size overflow"))?;
        let mut out = vec![0u8; len];
        // (image, slot in `out`), in file order.
        let mut wanted: Vec<(usize, usize)> = indices.iter().copied().zip(0..).collect();
        wanted.sort_unstable();
        let mut wanted = wanted.into_iter().peekable();
        let mut image = vec![0u8; k];
        for i in 0..n {
            if let Err(e) = self.body.read_exact(&mut image) {
                return Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    data_err(
                        &self.path,
                        format!(
                            "header says {n} images of {}x{} but the file ends within image {i}",
                            self.rows, self.cols
                        ),
                    )
                } else {
                    read_err(&self.path, e)
                });
            }
            while let Some((_, slot)) = wanted.next_if(|&(j, _)| j == i) {
                if let Some(dst) = out.get_mut(slot * k..(slot + 1) * k) {
                    dst.copy_from_slice(&image);
                }
            }
        }
        let mut extra = [0u8; 1];
        if self
            .body
            .read(&mut extra)
            .map_err(|e| read_err(&self.path, e))?
            > 0
        {
            return Err(data_err(
                &self.path,
                format!(
                    "header says {n} images of {}x{} but more bytes follow",
                    self.rows, self.cols
                ),
            ));
        }
        Ok(out)
    }
}

fn read_err(path: &Path, e: std::io::Error) -> Error {
    data_err(path, format!("reading: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestDir;

    fn idx(magic: u32, dims: &[u32], body: &[u8]) -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(body);
        v
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// 40 images of 2x3 (image i is six bytes of i), labels i % 10, and a 3-image test set.
    fn write_set(dir: &TestDir, compress: bool) {
        let n = 40u8;
        let pixels: Vec<u8> = (0..n).flat_map(|i| [i; 6]).collect();
        let labels: Vec<u8> = (0..n).map(|i| i % 10).collect();
        let files = [
            ("train-images-idx3-ubyte", idx(0x803, &[40, 2, 3], &pixels)),
            ("train-labels-idx1-ubyte", idx(0x801, &[40], &labels)),
            ("t10k-images-idx3-ubyte", idx(0x803, &[3, 2, 3], &[9; 18])),
            ("t10k-labels-idx1-ubyte", idx(0x801, &[3], &[1, 2, 3])),
        ];
        for (name, bytes) in files {
            if compress {
                dir.write(&format!("{name}.gz"), gz(&bytes));
            } else {
                dir.write(name, bytes);
            }
        }
    }

    fn assert_same(a: &Dataset, b: &Dataset) {
        assert_eq!((&a.x, &a.y, a.features), (&b.x, &b.y, b.features));
    }

    /// The streamed shard is the subset of the whole set that the node cut before, for every
    /// partition kind, raw and gzipped.
    #[test]
    fn streamed_shard_equals_the_cut_of_the_whole_set() {
        for compress in [false, true] {
            let dir = TestDir::new(if compress { "shard-gz" } else { "shard" });
            write_set(&dir, compress);
            let whole = crate::data::load_idx_dir(dir.path()).unwrap();
            for how in [
                Partition::Iid,
                Partition::Dirichlet(0.5),
                Partition::Shards(2),
            ] {
                let parts = partition(&whole.train, 3, how, 11);
                for (s, part) in parts.iter().enumerate() {
                    let got =
                        load_shard(DatasetKind::Mnist, Some(dir.path()), 3, s, how, 11).unwrap();
                    assert_same(&got.train, &whole.train.subset(part));
                    assert_same(&got.test, &whole.test);
                }
            }
        }
    }

    /// Indices in any order, repeated, come back in that order.
    #[test]
    fn take_keeps_the_order_asked_for() {
        let dir = TestDir::new("shard-take");
        write_set(&dir, true);
        let images = IdxImages::open(dir.path(), "train-images-idx3-ubyte").unwrap();
        assert_eq!((images.count, images.rows, images.cols), (40, 2, 3));
        let got = images.take(&[39, 2, 7, 2, 0]).unwrap();
        let want: Vec<u8> = [39u8, 2, 7, 2, 0].iter().flat_map(|&i| [i; 6]).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn bad_files_are_named_errors() {
        let dir = TestDir::new("shard-bad");
        write_set(&dir, false);
        let err = |d: &TestDir| {
            load_shard(DatasetKind::Mnist, Some(d.path()), 2, 0, Partition::Iid, 1)
                .unwrap_err()
                .to_string()
        };
        let images = IdxImages::open(dir.path(), "train-images-idx3-ubyte").unwrap();
        let e = images.take(&[3, 40]).unwrap_err().to_string();
        assert!(
            e.contains("image 40 asked for but the file holds 40"),
            "{e}"
        );

        let pixels: Vec<u8> = (0..40u8).flat_map(|i| [i; 6]).collect();
        dir.write(
            "train-images-idx3-ubyte",
            idx(0x803, &[40, 2, 3], &pixels[..239]),
        );
        let e = err(&dir);
        assert!(e.contains("the file ends within image 39"), "{e}");
        let mut long = pixels.clone();
        long.push(0);
        dir.write("train-images-idx3-ubyte", idx(0x803, &[40, 2, 3], &long));
        let e = err(&dir);
        assert!(e.contains("more bytes follow"), "{e}");
        dir.write("train-images-idx3-ubyte", idx(0x803, &[39, 2, 3], &pixels));
        let e = err(&dir);
        assert!(
            e.contains("40 labels but") && e.contains("39 images"),
            "{e}"
        );
        dir.write("train-images-idx3-ubyte", idx(0x801, &[40, 2, 3], &pixels));
        assert!(err(&dir).contains("bad magic"));
        dir.write("train-images-idx3-ubyte", [0, 0, 8, 3]);
        assert!(err(&dir).contains("truncated header"));
        let e = load_shard(
            DatasetKind::Mnist,
            Some(&dir.path().join("nope")),
            2,
            0,
            Partition::Iid,
            1,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("nope") && e.contains("not found"), "{e}");
        let e = load_shard(DatasetKind::Mnist, None, 2, 0, Partition::Iid, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--data-dir"), "{e}");
        let e = load_shard(DatasetKind::Digits, None, 2, 2, Partition::Iid, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("shard 2 of 2"), "{e}");
    }

    /// The real MNIST test set read in chunks scores a model exactly as the loaded set does.
    #[test]
    fn real_mnist_eval_set_scores_as_the_loaded_test_set() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/mnist");
        assert!(dir.is_dir(), "{} is missing", dir.display());
        let kind = ModelSpec::mlp();
        let params = kind.init(5);
        let (_, streamed) =
            load_node_shard(DatasetKind::Mnist, Some(&dir), 4, 0, Partition::Iid, 1).unwrap();
        assert!(
            matches!(streamed, EvalSet::Idx(_)),
            "the test set was loaded"
        );
        let loaded = crate::data::load_idx_dir(&dir).unwrap().test;
        assert_eq!((streamed.len(), streamed.features()), (10_000, 784));
        assert_eq!(streamed.labels(), &loaded.y[..]);
        let (a, l) = streamed.evaluate_params(&kind, &params).unwrap();
        let (b, m) = crate::train::evaluate_params(&kind, &params, &loaded).unwrap();
        assert_eq!(a, b);
        assert!((l - m).abs() < 1e-5, "{l} vs {m}");
    }

    /// Chunks come in file order with their labels; a file changed since opening is an error.
    #[test]
    fn eval_set_chunks_follow_the_file_and_notice_a_change() {
        let dir = TestDir::new("shard-eval");
        write_set(&dir, false);
        let set = IdxEvalSet::open(dir.path()).unwrap();
        let mut seen = Vec::new();
        set.for_each_chunk(2, |d| {
            seen.push((d.y.clone(), d.len(), d.features));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![(vec![1, 2], 2, 6), (vec![3], 1, 6)]);
        dir.write("t10k-images-idx3-ubyte", idx(0x803, &[4, 2, 3], &[9; 24]));
        let err = set.for_each_chunk(2, |_| Ok(())).unwrap_err().to_string();
        assert!(err.contains("changed since it was opened"), "{err}");
    }

    /// The real MNIST: node `s` of 4 gets exactly the samples, in the order, that cutting the
    /// whole decompressed file gave (the copy must be there: a missing one fails the test).
    #[test]
    fn real_mnist_streamed_shards_equal_the_whole_file_cut() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/mnist");
        assert!(dir.is_dir(), "{} is missing", dir.display());
        let whole = crate::data::load_idx_dir(&dir).unwrap();
        for how in [Partition::Dirichlet(0.5), Partition::Iid] {
            let parts = partition(&whole.train, 4, how, 42);
            for (s, part) in parts.iter().enumerate() {
                let got = load_shard(DatasetKind::Mnist, Some(&dir), 4, s, how, 42).unwrap();
                assert_same(&got.train, &whole.train.subset(part));
                assert_eq!(got.train.len(), part.len());
            }
        }
        let digits = crate::data::digits().unwrap();
        let part = &partition(&digits.train, 4, Partition::Iid, 3)[1];
        let got = load_shard(DatasetKind::Digits, None, 4, 1, Partition::Iid, 3).unwrap();
        assert_same(&got.train, &digits.train.subset(part));
    }
}
