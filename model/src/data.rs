//! Datasets: MNIST-format IDX files (MNIST, Fashion-MNIST) and the embedded 8x8 digits.
//!
//! A [`Dataset`] is a dense row-major `f32` matrix of features scaled to [0, 1] plus `u8` labels.
//! Every header, magic number and length in an IDX file is checked; a bad file gives an
//! [`Error::Data`] naming the file and what was wrong.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::compact::Features;
use crate::error::{Error, Result};
use crate::rng::Rng;

/// A stored pixel as a float in [0, 1].
fn pixel(b: u8) -> f32 {
    f32::from(b) / 255.0
}

/// The embedded scikit-learn 8x8 digits (BSD-3, see `model/data/COPYING`).
const DIGITS_CSV_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");

/// Number of classes of every dataset here.
pub const NUM_CLASSES: usize = 10;

/// A labelled dataset held in memory, compactly: image pixels stay the `u8` they were stored
/// as (a quarter of `f32`) and become floats only for the batch being trained on
/// ([`Dataset::extend_row`], [`Dataset::row_into`]).
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Row-major features, `len * features` values: pixels (read as `p / 255`, in [0, 1]) or
    /// floats.
    pub x: Features,
    /// One label per row: a class number (`0..NUM_CLASSES` for the built-in data sets).
    pub y: Vec<u8>,
    /// Features per row (784 for MNIST, 64 for digits).
    pub features: usize,
}

impl Dataset {
    /// A set of `f32` features.
    pub fn dense(x: Vec<f32>, y: Vec<u8>, features: usize) -> Dataset {
        Dataset {
            x: Features::Dense(x),
            y,
            features,
        }
    }

    /// A text as a next-character stream: one row per character, in order, its label the
    /// character's id, no features (what [`crate::spec::ModelSpec::transformer`] trains on).
    /// Ids must fit a `u8` label ([`crate::compact::MAX_TRAIN_CLASSES`] characters at most).
    pub fn tokens(ids: &[u32]) -> Result<Dataset> {
        let y = ids
            .iter()
            .map(|&t| u8::try_from(t))
            .collect::<std::result::Result<Vec<u8>, _>>()
            .map_err(|_| {
                Error::Dataset(format!(
                    "a token id above 255: a token stream holds at most {} characters",
                    crate::compact::MAX_TRAIN_CLASSES
                ))
            })?;
        Ok(Dataset {
            x: Features::Pixels(Vec::new()),
            y,
            features: 0,
        })
    }

    /// The ids of a token stream ([`Dataset::tokens`]): its labels, in order.
    pub fn token_ids(&self) -> Vec<u32> {
        self.y.iter().map(|&t| u32::from(t)).collect()
    }

    /// Appends row `i` as floats to `out`.
    pub fn extend_row(&self, i: usize, out: &mut Vec<f32>) {
        let f = self.features;
        match &self.x {
            Features::Pixels(p) => out.extend(p[i * f..(i + 1) * f].iter().map(|&b| pixel(b))),
            Features::Dense(d) => out.extend_from_slice(&d[i * f..(i + 1) * f]),
        }
    }

    /// Writes row `i` as floats into `out` (`features` long).
    pub fn row_into(&self, i: usize, out: &mut [f32]) {
        let f = self.features;
        match &self.x {
            Features::Pixels(p) => {
                for (o, &b) in out.iter_mut().zip(&p[i * f..(i + 1) * f]) {
                    *o = pixel(b);
                }
            }
            Features::Dense(d) => out.copy_from_slice(&d[i * f..(i + 1) * f]),
        }
    }

    /// Every feature as floats (tests and benchmarks; training reads rows).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.x {
            Features::Pixels(p) => p.iter().map(|&b| pixel(b)).collect(),
            Features::Dense(d) => d.clone(),
        }
    }

    /// Bytes held by features and labels.
    pub fn memory_bytes(&self) -> usize {
        let x = match &self.x {
            Features::Pixels(p) => p.len(),
            Features::Dense(d) => d.len() * size_of::<f32>(),
        };
        x + self.y.len()
    }

    /// The samples of every part, in order, as one set (pixels stay pixels when every part holds
    /// pixels). The parts must have `features` inputs each.
    pub fn concat(parts: &[Dataset], features: usize) -> Result<Dataset> {
        if let Some(p) = parts.iter().find(|p| p.features != features) {
            return Err(Error::Dataset(format!(
                "a part has {} features, expected {features}",
                p.features
            )));
        }
        let y = parts.iter().flat_map(|p| p.y.iter().copied()).collect();
        let all_pixels = parts.iter().all(|p| matches!(p.x, Features::Pixels(_)));
        let x = if all_pixels && !parts.is_empty() {
            let mut v = Vec::new();
            for p in parts {
                if let Features::Pixels(px) = &p.x {
                    v.extend_from_slice(px);
                }
            }
            Features::Pixels(v)
        } else {
            let mut v = Vec::new();
            for p in parts {
                v.extend(p.to_f32());
            }
            Features::Dense(v)
        };
        Ok(Dataset { x, y, features })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// True when the set holds no sample.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// The rows at `idx`, as a new dataset (used for partitions and splits).
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        let f = self.features;
        let y = idx.iter().map(|&i| self.y[i]).collect();
        let x = match &self.x {
            Features::Pixels(p) => {
                let mut x = Vec::with_capacity(idx.len() * f);
                for &i in idx {
                    x.extend_from_slice(&p[i * f..(i + 1) * f]);
                }
                Features::Pixels(x)
            }
            Features::Dense(d) => {
                let mut x = Vec::with_capacity(idx.len() * f);
                for &i in idx {
                    x.extend_from_slice(&d[i * f..(i + 1) * f]);
                }
                Features::Dense(x)
            }
        };
        Dataset { x, y, features: f }
    }

    /// Every feature multiplied by `scale`, as `f32` features (pixels become floats: four
    /// times the memory). A fixed rescaling chosen without looking at the data costs no privacy;
    /// under DP-SGD it changes how much of each example's gradient norm the first layer takes
    /// (`||dz||^2 (||x||^2 + 1)`, see [`crate::fast`]).
    pub fn scaled(&self, scale: f32) -> Dataset {
        Dataset::dense(
            self.to_f32().into_iter().map(|v| v * scale).collect(),
            self.y.clone(),
            self.features,
        )
    }

    /// How many labels to count: one past the largest label, and at least [`NUM_CLASSES`] (the
    /// built-in data sets' ten, whether or not a subset holds each).
    pub fn num_labels(&self) -> usize {
        num_labels(&self.y)
    }

    /// Count of samples per label, `num_labels()` of them.
    pub fn label_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.num_labels()];
        for &l in &self.y {
            c[usize::from(l)] += 1;
        }
        c
    }
}

/// One past the largest of `labels`, and at least [`NUM_CLASSES`] ([`Dataset::num_labels`]).
pub(crate) fn num_labels(labels: &[u8]) -> usize {
    labels
        .iter()
        .map(|&l| usize::from(l) + 1)
        .max()
        .unwrap_or(0)
        .max(NUM_CLASSES)
}

/// Which dataset a command works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// The embedded 8x8 digits (1,797 samples, 64 features).
    Digits,
    /// MNIST IDX files in a directory.
    Mnist,
    /// Fashion-MNIST IDX files in a directory (same file names and format as MNIST).
    FashionMnist,
}

impl std::str::FromStr for DatasetKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "digits" => Ok(Self::Digits),
            "mnist" => Ok(Self::Mnist),
            "fashion-mnist" | "fashion" => Ok(Self::FashionMnist),
            _ => Err(crate::error::parse_err(
                "dataset",
                s,
                "expected digits, mnist or fashion-mnist",
            )),
        }
    }
}

impl std::fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Digits => "digits",
            Self::Mnist => "mnist",
            Self::FashionMnist => "fashion-mnist",
        })
    }
}

impl DatasetKind {
    /// The schema of this data set: grey images (8x8 digits, 28x28 otherwise), ten classes
    /// named as the data set names them.
    pub fn schema(self) -> crate::schema::DataSchema {
        use crate::schema::{DataSchema, InputSpec, Task};
        let side = match self {
            Self::Digits => 8,
            Self::Mnist | Self::FashionMnist => 28,
        };
        let classes: Vec<String> = match self {
            Self::Digits | Self::Mnist => (0..NUM_CLASSES).map(|d| d.to_string()).collect(),
            Self::FashionMnist => [
                "t-shirt",
                "trouser",
                "pullover",
                "dress",
                "coat",
                "sandal",
                "shirt",
                "sneaker",
                "bag",
                "ankle-boot",
            ]
            .map(String::from)
            .to_vec(),
        };
        DataSchema {
            task: Task::Classification,
            classes,
            input: InputSpec::Images {
                width: side,
                height: side,
                channels: 1,
                resize: false,
            },
        }
    }
}

/// A train and a test set.
#[derive(Debug, Clone)]
pub struct Split {
    /// Training samples (partitioned over nodes).
    pub train: Dataset,
    /// Held-out samples for evaluation.
    pub test: Dataset,
}

/// Loads a dataset. `dir` is needed for the IDX datasets and ignored for the embedded digits.
pub fn load(kind: DatasetKind, dir: Option<&Path>) -> Result<Split> {
    match kind {
        DatasetKind::Digits => digits(),
        DatasetKind::Mnist | DatasetKind::FashionMnist => {
            let dir = dir.ok_or_else(|| Error::Data {
                path: PathBuf::from("<none>"),
                what: format!("dataset {kind} needs --data-dir with its IDX files"),
            })?;
            load_idx_dir(dir)
        }
    }
}

/// The embedded 8x8 digits with a deterministic stratified-by-shuffle 80/20 split (seed fixed).
pub fn digits() -> Result<Split> {
    let all = parse_digits(DIGITS_CSV_GZ, Path::new("<embedded digits.csv.gz>"))?;
    let mut idx: Vec<usize> = (0..all.len()).collect();
    Rng::seed(0xD161_7500).shuffle(&mut idx);
    let n_test = all.len() / 5;
    let (test_idx, train_idx) = idx.split_at(n_test);
    Ok(Split {
        train: all.subset(train_idx),
        test: all.subset(test_idx),
    })
}

fn parse_digits(gz: &[u8], path: &Path) -> Result<Dataset> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut text)
        .map_err(|e| data_err(path, format!("gzip: {e}")))?;
    let mut x = Vec::new();
    let mut y = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != 65 {
            return Err(data_err(
                path,
                format!("line {}: {} fields, expected 65", line_no + 1, fields.len()),
            ));
        }
        for f in &fields[..64] {
            let v: f32 = f
                .trim()
                .parse()
                .map_err(|_| data_err(path, format!("line {}: bad value {f:?}", line_no + 1)))?;
            x.push(v / 16.0);
        }
        let label: u8 = fields[64]
            .trim()
            .parse()
            .ok()
            .filter(|l| (*l as usize) < NUM_CLASSES)
            .ok_or_else(|| data_err(path, format!("line {}: bad label", line_no + 1)))?;
        y.push(label);
    }
    Ok(Dataset::dense(x, y, 64))
}

pub(crate) fn data_err(path: &Path, what: impl Into<String>) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// Reads `name` or `name.gz` from `dir`, decompressing if needed.
pub(crate) fn read_maybe_gz(dir: &Path, name: &str) -> Result<(PathBuf, Vec<u8>)> {
    let raw = dir.join(name);
    let gz = dir.join(format!("{name}.gz"));
    let (path, compressed) = if raw.is_file() {
        (raw, false)
    } else if gz.is_file() {
        (gz, true)
    } else {
        return Err(data_err(&raw, "not found (nor with .gz)"));
    };
    let bytes = std::fs::read(&path).map_err(|source| Error::Io {
        path: path.clone(),
        source,
    })?;
    if !compressed {
        return Ok((path, bytes));
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_end(&mut out)
        .map_err(|e| data_err(&path, format!("gzip: {e}")))?;
    Ok((path, out))
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Parses an IDX3 image file: magic 0x00000803, count, rows, cols, then `count*rows*cols` bytes.
pub fn parse_idx_images(bytes: &[u8], path: &Path) -> Result<(usize, usize, Vec<f32>)> {
    let (n, (rows, cols), body) = parse_idx_images_u8(bytes, path)?;
    let x = body.iter().map(|&b| b as f32 / 255.0).collect();
    Ok((n, rows * cols, x))
}

/// Checks an IDX3 image file's header and length; returns the count, (rows, cols) and the pixels
/// as stored (u8, row-major, image after image).
pub fn parse_idx_images_u8<'a>(
    bytes: &'a [u8],
    path: &Path,
) -> Result<(usize, (usize, usize), &'a [u8])> {
    let (n, rows, cols) = parse_idx3_header(bytes, path)?;
    let want = n
        .checked_mul(rows * cols)
        .ok_or_else(|| data_err(path, "size overflow"))?;
    let body = &bytes[16..];
    if body.len() != want {
        return Err(data_err(
            path,
            format!(
                "header says {n} images of {rows}x{cols} ({want} bytes) but {} bytes follow",
                body.len()
            ),
        ));
    }
    Ok((n, (rows, cols), body))
}

/// Checks an IDX3 image file's 16-byte header (magic and a plausible image size); returns the
/// count, rows and cols.
pub(crate) fn parse_idx3_header(bytes: &[u8], path: &Path) -> Result<(usize, usize, usize)> {
    if bytes.len() < 16 {
        return Err(data_err(
            path,
            format!("truncated header ({} bytes, need 16)", bytes.len()),
        ));
    }
    let magic = be_u32(bytes, 0);
    if magic != 0x0803 {
        return Err(data_err(
            path,
            format!("bad magic 0x{magic:08x}, expected 0x00000803 (IDX3 u8 images)"),
        ));
    }
    let n = be_u32(bytes, 4) as usize;
    let rows = be_u32(bytes, 8) as usize;
    let cols = be_u32(bytes, 12) as usize;
    if rows == 0 || cols == 0 || rows > 4096 || cols > 4096 {
        return Err(data_err(
            path,
            format!("implausible image size {rows}x{cols}"),
        ));
    }
    Ok((n, rows, cols))
}

/// Parses an IDX1 label file: magic 0x00000801, count, then `count` labels in 0..10.
pub fn parse_idx_labels(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    if bytes.len() < 8 {
        return Err(data_err(
            path,
            format!("truncated header ({} bytes, need 8)", bytes.len()),
        ));
    }
    let magic = be_u32(bytes, 0);
    if magic != 0x0801 {
        return Err(data_err(
            path,
            format!("bad magic 0x{magic:08x}, expected 0x00000801 (IDX1 u8 labels)"),
        ));
    }
    let n = be_u32(bytes, 4) as usize;
    let body = &bytes[8..];
    if body.len() != n {
        return Err(data_err(
            path,
            format!("header says {n} labels but {} bytes follow", body.len()),
        ));
    }
    if let Some(pos) = body.iter().position(|&l| l as usize >= NUM_CLASSES) {
        return Err(data_err(
            path,
            format!("label {} at index {pos} is out of range", body[pos]),
        ));
    }
    Ok(body.to_vec())
}

pub(crate) fn load_idx_pair(dir: &Path, images: &str, labels: &str) -> Result<Dataset> {
    let (ipath, ibytes) = read_maybe_gz(dir, images)?;
    let (lpath, lbytes) = read_maybe_gz(dir, labels)?;
    let (n, (rows, cols), _) = parse_idx_images_u8(&ibytes, &ipath)?;
    // The pixels are the file after its 16-byte header: kept in place, not copied (a copy
    // doubled the peak memory of loading MNIST).
    let mut pixels = ibytes;
    pixels.drain(..16);
    let (features, x) = (rows * cols, Features::Pixels(pixels));
    let y = parse_idx_labels(&lbytes, &lpath)?;
    if y.len() != n {
        return Err(data_err(
            &lpath,
            format!("{} labels but {} has {n} images", y.len(), ipath.display()),
        ));
    }
    Ok(Dataset { x, y, features })
}

/// Loads `train-*` and `t10k-*` IDX files (raw or `.gz`) from `dir`.
pub fn load_idx_dir(dir: &Path) -> Result<Split> {
    if !dir.is_dir() {
        return Err(data_err(dir, "data directory not found"));
    }
    Ok(Split {
        train: load_idx_pair(dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")?,
        test: load_idx_pair(dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_multiplies_every_feature_and_keeps_the_labels() {
        let d = digits().unwrap().test;
        let s = d.scaled(0.25);
        assert_eq!(
            (s.y.as_slice(), s.features, s.len()),
            (d.y.as_slice(), 64, d.len())
        );
        let (a, b) = (d.to_f32(), s.to_f32());
        assert!(a.iter().any(|v| *v > 0.5));
        assert!(
            a.iter().zip(&b).all(|(x, y)| *y == *x * 0.25),
            "{:?}",
            &b[..8]
        );
        let mut row = vec![0.0; 64];
        s.row_into(3, &mut row);
        assert_eq!(row, b[3 * 64..4 * 64]);
    }

    #[test]
    fn embedded_digits_split_is_deterministic() {
        let a = digits().unwrap();
        let b = digits().unwrap();
        assert_eq!(a.train.len() + a.test.len(), 1797);
        assert_eq!(a.test.len(), 359);
        assert_eq!(a.train.y, b.train.y);
        assert_eq!(a.train.features, 64);
        assert!(a.train.to_f32().iter().all(|v| (0.0..=1.0).contains(v)));
        // Every class is present in both halves.
        assert!(a.train.label_counts().iter().all(|&c| c > 100));
        assert!(a.test.label_counts().iter().all(|&c| c > 20));
    }

    fn idx3(n: u32, r: u32, c: u32, body: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [0x0803, n, r, c] {
            v.extend_from_slice(&u32::to_be_bytes(w));
        }
        v.extend(std::iter::repeat_n(255u8, body));
        v
    }

    #[test]
    fn idx_images_checks_header_and_length() {
        let p = Path::new("imgs");
        let (n, f, x) = parse_idx_images(&idx3(2, 2, 3, 12), p).unwrap();
        assert_eq!((n, f, x.len()), (2, 6, 12));
        assert_eq!(x[0], 1.0);
        let err = parse_idx_images(&idx3(2, 2, 3, 11), p)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("imgs") && err.contains("11 bytes follow"),
            "{err}"
        );
        let mut bad = idx3(1, 1, 1, 1);
        bad[3] = 0x01;
        let err = parse_idx_images(&bad, p).unwrap_err().to_string();
        assert!(err.contains("bad magic"), "{err}");
        assert!(parse_idx_images(&[0, 0, 8], p).is_err());
        // A count that would overflow must not panic.
        assert!(parse_idx_images(&idx3(u32::MAX, 4096, 4096, 0), p).is_err());
    }

    #[test]
    fn idx_labels_checks_range() {
        let p = Path::new("labels");
        let mut v = vec![0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3];
        assert_eq!(parse_idx_labels(&v, p).unwrap(), vec![1, 2, 3]);
        v[10] = 10;
        let err = parse_idx_labels(&v, p).unwrap_err().to_string();
        assert!(err.contains("out of range"), "{err}");
        v.pop();
        assert!(parse_idx_labels(&v, p).is_err());
    }

    #[test]
    fn missing_dir_names_it() {
        let err = load_idx_dir(Path::new("/nonexistent/cohort-data"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/cohort-data"), "{err}");
    }

    /// Reads the real MNIST files of `../shared/data/mnist` (CI always has them: a missing copy
    /// fails the test).
    #[test]
    fn real_mnist_files_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/mnist");
        assert!(dir.is_dir(), "{} is missing", dir.display());
        let s = load_idx_dir(&dir).unwrap();
        assert_eq!(
            (s.train.len(), s.test.len(), s.train.features),
            (60000, 10000, 784)
        );
        assert_eq!(&s.train.y[..10], &[5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
        assert_eq!(&s.test.y[..10], &[7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
    }
}
