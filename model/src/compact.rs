//! A node's own data held compactly: images as the `u8` pixels they were stored in (a quarter of
//! the memory of `f32`), tabular rows as their normalised `f32` values, labels as `u16`.
//!
//! Floats are produced only for the batch being trained on ([`CompactDataset::batch_into`], into
//! buffers the caller reuses), or, for the training code that wants a whole [`Dataset`], by
//! [`CompactDataset::to_dataset`].

use std::path::Path;

use crate::data::{
    Dataset, NUM_CLASSES, data_err, parse_idx_images_u8, parse_idx_labels, read_maybe_gz,
};
use crate::error::{Error, Result, parse_err};
use crate::rng::Rng;

/// Most classes the training path takes (its labels are `u8`).
pub const MAX_TRAIN_CLASSES: usize = 256;

/// Every sample's inputs, row-major (`len * input_size` values).
#[derive(Debug, Clone, PartialEq)]
pub enum Features {
    /// Image pixels as stored; a batch holds `p / 255`, in [0, 1].
    Pixels(Vec<u8>),
    /// Tabular values, already normalised and one-hot encoded.
    Dense(Vec<f32>),
}

impl Features {
    fn len(&self) -> usize {
        match self {
            Self::Pixels(p) => p.len(),
            Self::Dense(d) => d.len(),
        }
    }
}

/// Labelled samples, features held as [`Features`], labels as class numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactDataset {
    /// `labels.len() * input_size` values.
    features: Features,
    /// One class number per sample, each below `num_classes`.
    labels: Vec<u16>,
    /// Input values per sample.
    input_size: usize,
    /// Number of classes of the schema the data was loaded with.
    num_classes: usize,
}

impl CompactDataset {
    /// Builds a dataset after checking that the features fill `labels.len()` rows of
    /// `input_size`, that every label is below `num_classes`, and that dense values are finite.
    pub fn new(
        features: Features,
        labels: Vec<u16>,
        input_size: usize,
        num_classes: usize,
    ) -> Result<Self> {
        if input_size == 0 {
            return Err(Error::Dataset("input size 0".into()));
        }
        let want = labels.len().checked_mul(input_size);
        if want != Some(features.len()) {
            return Err(Error::Dataset(format!(
                "{} feature values for {} samples of {input_size}",
                features.len(),
                labels.len()
            )));
        }
        if let Some(pos) = labels.iter().position(|&l| l as usize >= num_classes) {
            return Err(Error::Dataset(format!(
                "label {} of sample {pos} is not below {num_classes} classes",
                labels[pos]
            )));
        }
        if let Features::Dense(d) = &features
            && let Some(pos) = d.iter().position(|v| !v.is_finite())
        {
            return Err(Error::Dataset(format!(
                "value {} of sample {} is not finite",
                d[pos],
                pos / input_size
            )));
        }
        Ok(CompactDataset {
            features,
            labels,
            input_size,
            num_classes,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there is no sample.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Input values per sample.
    pub fn input_size(&self) -> usize {
        self.input_size
    }

    /// Number of classes (labels are below it).
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The stored features.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// The class number of every sample.
    pub fn labels(&self) -> &[u16] {
        &self.labels
    }

    /// Samples per class, indexed by class number.
    pub fn label_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.num_classes];
        for &l in &self.labels {
            if let Some(n) = c.get_mut(l as usize) {
                *n += 1;
            }
        }
        c
    }

    /// Bytes held by features and labels.
    pub fn memory_bytes(&self) -> usize {
        let f = match &self.features {
            Features::Pixels(p) => p.len(),
            Features::Dense(d) => d.len() * size_of::<f32>(),
        };
        f + self.labels.len() * size_of::<u16>()
    }

    fn check(&self, index: usize) -> Result<()> {
        if index < self.len() {
            Ok(())
        } else {
            Err(Error::IndexOutOfRange {
                index,
                len: self.len(),
            })
        }
    }

    /// Replaces `xs` with the inputs of the samples at `indices` (`indices.len() * input_size`
    /// floats, row-major; pixels divided by 255) and `ys` with their labels. The buffers keep their
    /// capacity, so a training loop allocates them once.
    pub fn batch_into(
        &self,
        indices: &[usize],
        xs: &mut Vec<f32>,
        ys: &mut Vec<u32>,
    ) -> Result<()> {
        xs.clear();
        ys.clear();
        xs.reserve(indices.len() * self.input_size);
        ys.reserve(indices.len());
        let k = self.input_size;
        for &i in indices {
            self.check(i)?;
            match &self.features {
                Features::Pixels(p) => {
                    xs.extend(p[i * k..(i + 1) * k].iter().map(|&b| f32::from(b) / 255.0));
                }
                Features::Dense(d) => xs.extend_from_slice(&d[i * k..(i + 1) * k]),
            }
            ys.push(u32::from(self.labels[i]));
        }
        Ok(())
    }

    /// The samples at `indices`, in that order, as a new dataset.
    pub fn subset(&self, indices: &[usize]) -> Result<Self> {
        let k = self.input_size;
        let mut labels = Vec::with_capacity(indices.len());
        let features = match &self.features {
            Features::Pixels(p) => {
                let mut out = Vec::with_capacity(indices.len() * k);
                for &i in indices {
                    self.check(i)?;
                    out.extend_from_slice(&p[i * k..(i + 1) * k]);
                    labels.push(self.labels[i]);
                }
                Features::Pixels(out)
            }
            Features::Dense(d) => {
                let mut out = Vec::with_capacity(indices.len() * k);
                for &i in indices {
                    self.check(i)?;
                    out.extend_from_slice(&d[i * k..(i + 1) * k]);
                    labels.push(self.labels[i]);
                }
                Features::Dense(out)
            }
        };
        Ok(CompactDataset {
            features,
            labels,
            input_size: k,
            num_classes: self.num_classes,
        })
    }

    /// Splits into (train, valid): a seeded shuffle picks `round(len * valid_fraction)` samples
    /// (at least one when the fraction is positive) for validation; both parts keep the original
    /// order. The same data, fraction and seed always give the same split. `valid_fraction` must be
    /// in [0, 1) and leave at least one training sample.
    pub fn split(&self, valid_fraction: f64, seed: u64) -> Result<(Self, Self)> {
        if !(0.0..1.0).contains(&valid_fraction) {
            return Err(parse_err(
                "validation fraction",
                &valid_fraction.to_string(),
                "expected a number in [0, 1)",
            ));
        }
        let n = self.len();
        let mut n_valid = (n as f64 * valid_fraction).round() as usize;
        if valid_fraction > 0.0 {
            n_valid = n_valid.max(1);
        }
        if n_valid >= n {
            return Err(Error::Dataset(format!(
                "a validation fraction of {valid_fraction} of {n} samples leaves none to train on"
            )));
        }
        let mut idx: Vec<usize> = (0..n).collect();
        Rng::seed(seed).shuffle(&mut idx);
        let (valid, train) = idx.split_at_mut(n_valid);
        valid.sort_unstable();
        train.sort_unstable();
        Ok((self.subset(train)?, self.subset(valid)?))
    }

    /// The whole set as the dense [`Dataset`] that [`crate::train`] takes. That path has `u8`
    /// labels, so a schema with more than [`MAX_TRAIN_CLASSES`] classes is an error here.
    pub fn to_dataset(&self) -> Result<Dataset> {
        if self.num_classes > MAX_TRAIN_CLASSES {
            return Err(Error::Dataset(format!(
                "{} classes; the training path takes at most {MAX_TRAIN_CLASSES}",
                self.num_classes
            )));
        }
        let x = self.features.clone();
        let y = self
            .labels
            .iter()
            .map(|&l| u8::try_from(l).map_err(|_| Error::Dataset(format!("label {l} over 255"))))
            .collect::<Result<Vec<u8>>>()?;
        Ok(Dataset {
            x,
            y,
            features: self.input_size,
        })
    }
}

/// The train and test sets of an IDX directory.
#[derive(Debug, Clone)]
pub struct CompactSplit {
    /// `train-images-idx3-ubyte` / `train-labels-idx1-ubyte`.
    pub train: CompactDataset,
    /// `t10k-images-idx3-ubyte` / `t10k-labels-idx1-ubyte`.
    pub test: CompactDataset,
}

/// Loads one IDX image file and its label file (raw or `.gz`) from `dir`, pixels kept as `u8`,
/// labels in `0..NUM_CLASSES`. Returns the set and the image size (rows, cols).
pub fn load_idx_pair_compact(
    dir: &Path,
    images: &str,
    labels: &str,
) -> Result<(CompactDataset, (usize, usize))> {
    let (ipath, ibytes) = read_maybe_gz(dir, images)?;
    let (n, (rows, cols), _) = parse_idx_images_u8(&ibytes, &ipath)?;
    // The pixels are the file after its 16-byte header, kept in place rather than copied.
    let mut pixels = ibytes;
    pixels.drain(..16);
    let (lpath, lbytes) = read_maybe_gz(dir, labels)?;
    let y = parse_idx_labels(&lbytes, &lpath)?;
    if y.len() != n {
        return Err(data_err(
            &lpath,
            format!("{} labels but {} has {n} images", y.len(), ipath.display()),
        ));
    }
    let y = y.into_iter().map(u16::from).collect();
    let set = CompactDataset::new(Features::Pixels(pixels), y, rows * cols, NUM_CLASSES)?;
    Ok((set, (rows, cols)))
}

/// Loads `train-*` and `t10k-*` IDX files (raw or `.gz`) from `dir` as u8 pixels: the compact
/// twin of [`crate::data::load_idx_dir`] (MNIST's train set is 47 MB here instead of 188 MB).
pub fn load_idx_dir_compact(dir: &Path) -> Result<CompactSplit> {
    if !dir.is_dir() {
        return Err(data_err(dir, "data directory not found"));
    }
    let (train, _) =
        load_idx_pair_compact(dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")?;
    let (test, _) = load_idx_pair_compact(dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?;
    Ok(CompactSplit { train, test })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestDir;

    fn pixels() -> CompactDataset {
        // 5 samples of 2 pixels: sample i is [i * 50, 255 - i], label i % 3.
        let p = (0..5u8).flat_map(|i| [i * 50, 255 - i]).collect();
        CompactDataset::new(Features::Pixels(p), vec![0, 1, 2, 0, 1], 2, 3).unwrap()
    }

    #[test]
    fn new_checks_shape_labels_and_values() {
        let e = CompactDataset::new(Features::Pixels(vec![0; 5]), vec![0, 1], 2, 2).unwrap_err();
        assert!(
            e.to_string().contains("5 feature values for 2 samples"),
            "{e}"
        );
        let e = CompactDataset::new(Features::Pixels(vec![0; 4]), vec![0, 2], 2, 2).unwrap_err();
        assert!(e.to_string().contains("label 2 of sample 1"), "{e}");
        let e = CompactDataset::new(Features::Dense(vec![0.0, f32::NAN]), vec![0, 1], 1, 2)
            .unwrap_err();
        assert!(e.to_string().contains("sample 1 is not finite"), "{e}");
        assert!(CompactDataset::new(Features::Dense(vec![]), vec![], 0, 2).is_err());
        let empty = CompactDataset::new(Features::Dense(vec![]), vec![], 3, 2).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn batches_scale_pixels_and_reuse_buffers() {
        let d = pixels();
        assert_eq!((d.len(), d.input_size(), d.num_classes()), (5, 2, 3));
        assert_eq!(d.memory_bytes(), 10 + 10);
        assert_eq!(d.label_counts(), vec![2, 2, 1]);
        let (mut xs, mut ys) = (vec![9.0; 100], vec![7; 100]);
        d.batch_into(&[4, 0], &mut xs, &mut ys).unwrap();
        assert_eq!(xs, vec![200.0 / 255.0, 251.0 / 255.0, 0.0, 1.0]);
        assert_eq!(ys, vec![1, 0]);
        d.batch_into(&[], &mut xs, &mut ys).unwrap();
        assert!(xs.is_empty() && ys.is_empty());
        let e = d.batch_into(&[1, 5], &mut xs, &mut ys).unwrap_err();
        assert!(
            matches!(e, Error::IndexOutOfRange { index: 5, len: 5 }),
            "{e}"
        );

        let dense = CompactDataset::new(
            Features::Dense(vec![-1.5, 2.0, 0.25, 3.0]),
            vec![1, 0],
            2,
            2,
        )
        .unwrap();
        dense.batch_into(&[1, 1], &mut xs, &mut ys).unwrap();
        assert_eq!(xs, vec![0.25, 3.0, 0.25, 3.0]);
        assert_eq!(ys, vec![0, 0]);
    }

    #[test]
    fn split_is_seeded_disjoint_and_ordered() {
        let n = 200usize;
        let p: Vec<u8> = (0..n).map(|i| i as u8).collect();
        let labels: Vec<u16> = (0..n).map(|i| (i % 4) as u16).collect();
        let d = CompactDataset::new(Features::Pixels(p), labels, 1, 4).unwrap();
        let (t1, v1) = d.split(0.25, 7).unwrap();
        let (t2, v2) = d.split(0.25, 7).unwrap();
        assert_eq!((t1.len(), v1.len()), (150, 50));
        assert_eq!((&t1, &v1), (&t2, &v2));
        let (_, v3) = d.split(0.25, 8).unwrap();
        assert_ne!(v1, v3, "another seed gives another split");
        // Disjoint, covering, each part in the original order.
        let ids = |s: &CompactDataset| match s.features() {
            Features::Pixels(p) => p.clone(),
            Features::Dense(_) => unreachable!(),
        };
        let (mut a, b) = (ids(&t1), ids(&v1));
        assert!(a.windows(2).all(|w| w[0] < w[1]) && b.windows(2).all(|w| w[0] < w[1]));
        a.extend(b);
        a.sort_unstable();
        assert_eq!(a, (0..n).map(|i| i as u8).collect::<Vec<_>>());
        // Labels travel with their samples.
        assert!(
            t1.labels()
                .iter()
                .zip(ids(&t1))
                .all(|(&l, p)| l == (p % 4) as u16)
        );

        let (t, v) = d.split(0.0, 1).unwrap();
        assert_eq!((t.len(), v.len()), (200, 0));
        assert_eq!(d.split(0.001, 1).unwrap().1.len(), 1);
        for bad in [1.0, -0.1, f64::NAN] {
            assert!(d.split(bad, 1).is_err(), "{bad}");
        }
        let one = d.subset(&[3]).unwrap();
        assert!(
            one.split(0.5, 1)
                .unwrap_err()
                .to_string()
                .contains("none to train")
        );
    }

    #[test]
    fn to_dataset_scales_and_checks_class_count() {
        let ds = pixels().to_dataset().unwrap();
        assert_eq!(ds.features, 2);
        assert_eq!(ds.y, vec![0, 1, 2, 0, 1]);
        // Pixels stay u8 until a batch reads them.
        assert_eq!(
            ds.x,
            Features::Pixels((0..5u8).flat_map(|i| [i * 50, 255 - i]).collect())
        );
        let (mut row, mut xs) = ([0.0f32; 2], Vec::new());
        ds.row_into(1, &mut row);
        ds.extend_row(1, &mut xs);
        assert_eq!(row, [50.0 / 255.0, 254.0 / 255.0]);
        assert_eq!(xs, row);
        assert_eq!(ds.memory_bytes(), 10 + 5);
        let many = CompactDataset::new(Features::Dense(vec![0.5]), vec![10], 1, 11).unwrap();
        assert_eq!(many.to_dataset().unwrap().y, vec![10]);
        let many = CompactDataset::new(Features::Dense(vec![0.5]), vec![256], 1, 257).unwrap();
        let e = many.to_dataset().unwrap_err();
        assert!(e.to_string().contains("at most 256"), "{e}");
    }

    fn idx(magic: u32, dims: &[u32], body: &[u8]) -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn idx_dir_keeps_u8_pixels() {
        let dir = TestDir::new("idx");
        dir.write(
            "train-images-idx3-ubyte",
            idx(0x803, &[2, 1, 3], &[0, 1, 2, 253, 254, 255]),
        );
        dir.write("train-labels-idx1-ubyte", idx(0x801, &[2], &[9, 4]));
        dir.write("t10k-images-idx3-ubyte", idx(0x803, &[1, 1, 3], &[7, 8, 9]));
        dir.write("t10k-labels-idx1-ubyte", idx(0x801, &[1], &[3]));
        let s = load_idx_dir_compact(dir.path()).unwrap();
        assert_eq!(
            s.train.features(),
            &Features::Pixels(vec![0, 1, 2, 253, 254, 255])
        );
        assert_eq!((s.train.labels(), s.train.input_size()), (&[9, 4][..], 3));
        assert_eq!((s.test.len(), s.test.labels()), (1, &[3][..]));

        dir.write("t10k-labels-idx1-ubyte", idx(0x801, &[2], &[3, 3]));
        let e = load_idx_dir_compact(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("t10k-labels-idx1-ubyte") && e.contains("2 labels"),
            "{e}"
        );
        let e = load_idx_dir_compact(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope") && e.contains("not found"), "{e}");
    }

    /// The real MNIST under `shared/data/mnist`: it must be there (a missing copy fails the test).
    #[test]
    fn real_mnist_compact() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/mnist");
        assert!(
            dir.is_dir(),
            "{} is missing: the shared MNIST copy is needed by this test",
            dir.display()
        );
        let s = load_idx_dir_compact(&dir).unwrap();
        assert_eq!(
            (s.train.len(), s.test.len(), s.train.input_size()),
            (60000, 10000, 784)
        );
        assert_eq!(&s.train.labels()[..10], &[5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
        assert_eq!(&s.test.labels()[..10], &[7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
        assert_eq!(s.train.memory_bytes(), 60000 * 784 + 60000 * 2);
        // The same floats as the f32 loader.
        let dense = crate::data::load_idx_dir(&dir).unwrap();
        let idx: Vec<usize> = vec![0, 1, 59999];
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        s.train.batch_into(&idx, &mut xs, &mut ys).unwrap();
        assert_eq!(xs, dense.train.subset(&idx).to_f32());
        assert_eq!(s.test.to_dataset().unwrap().to_f32(), dense.test.to_f32());
    }
}
