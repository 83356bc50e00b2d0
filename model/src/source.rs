//! Where a node's own data lives: `csv:PATH`, `images:DIR` or `idx:DIR`, loaded against the
//! cohort's [`DataSchema`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::compact::{CompactDataset, load_idx_pair_compact};
use crate::data::data_err;
use crate::error::{Error, Result, parse_err};
use crate::schema::{DataSchema, InputSpec};

/// A node's data: a file or directory and its format.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DataSource {
    /// A CSV file with a header (see [`crate::tabular`]); needs a tabular schema.
    Csv(PathBuf),
    /// A folder of class folders of PNG/JPEG images (see [`crate::images`]); needs an images schema.
    Images(PathBuf),
    /// An MNIST-style IDX directory; its `train-images-idx3-ubyte` and `train-labels-idx1-ubyte`
    /// (raw or `.gz`) are the node's data. Needs a 1-channel images schema of the files' size with
    /// 10 classes (IDX labels are digits 0-9); images are not resized.
    Idx(PathBuf),
}

impl FromStr for DataSource {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        const EXPECTED: &str = "expected csv:PATH, images:DIR or idx:DIR";
        let Some((prefix, path)) = s.split_once(':') else {
            return Err(parse_err("data source", s, EXPECTED));
        };
        if path.is_empty() {
            return Err(parse_err(
                "data source",
                s,
                "the path after the prefix is empty",
            ));
        }
        let path = PathBuf::from(path);
        match prefix {
            "csv" => Ok(Self::Csv(path)),
            "images" => Ok(Self::Images(path)),
            "idx" => Ok(Self::Idx(path)),
            _ => Err(parse_err(
                "data source",
                s,
                format!("unknown format '{prefix}', {EXPECTED}"),
            )),
        }
    }
}

impl TryFrom<String> for DataSource {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<DataSource> for String {
    fn from(d: DataSource) -> String {
        d.to_string()
    }
}

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (prefix, path) = match self {
            Self::Csv(p) => ("csv", p),
            Self::Images(p) => ("images", p),
            Self::Idx(p) => ("idx", p),
        };
        write!(f, "{prefix}:{}", path.display())
    }
}

impl DataSource {
    /// The file or directory.
    pub fn path(&self) -> &Path {
        match self {
            Self::Csv(p) | Self::Images(p) | Self::Idx(p) => p,
        }
    }

    /// Loads all of the node's samples, checked against `schema`.
    pub fn load(&self, schema: &DataSchema) -> Result<CompactDataset> {
        schema.validate()?;
        match self {
            Self::Csv(p) => crate::tabular::load_csv(p, schema),
            Self::Images(p) => crate::images::load_image_folder(p, schema),
            Self::Idx(p) => load_idx(p, schema),
        }
    }

    /// Loads the samples and splits them into (train, valid) with
    /// [`CompactDataset::split`]: deterministic for a given seed.
    pub fn load_split(
        &self,
        schema: &DataSchema,
        valid_fraction: f64,
        seed: u64,
    ) -> Result<(CompactDataset, CompactDataset)> {
        self.load(schema)?.split(valid_fraction, seed)
    }
}

fn load_idx(dir: &Path, schema: &DataSchema) -> Result<CompactDataset> {
    let InputSpec::Images {
        width,
        height,
        channels,
        ..
    } = schema.input
    else {
        return Err(Error::Schema(format!(
            "{} is an IDX directory but the schema's input is not images",
            dir.display()
        )));
    };
    if channels != 1 {
        return Err(Error::Schema(format!(
            "{} holds grey IDX images but the schema asks for {channels} channels",
            dir.display()
        )));
    }
    if schema.num_classes() != crate::data::NUM_CLASSES {
        return Err(Error::Schema(format!(
            "{} holds IDX digit labels (10 classes) but the schema has {} classes",
            dir.display(),
            schema.num_classes()
        )));
    }
    if !dir.is_dir() {
        return Err(data_err(dir, "data directory not found"));
    }
    let (set, (rows, cols)) =
        load_idx_pair_compact(dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")?;
    if (cols, rows) != (width as usize, height as usize) {
        return Err(data_err(
            dir,
            format!("IDX images are {cols}x{rows} but the schema says {width}x{height}"),
        ));
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::tests::{images, tabular};
    use crate::testutil::TestDir;

    #[test]
    fn parses_prefixes_and_round_trips() {
        for (s, want) in [
            ("csv:data/x.csv", DataSource::Csv("data/x.csv".into())),
            ("images:/srv/pics", DataSource::Images("/srv/pics".into())),
            ("idx:mnist", DataSource::Idx("mnist".into())),
            ("csv:a:b.csv", DataSource::Csv("a:b.csv".into())),
        ] {
            let got: DataSource = s.parse().unwrap();
            assert_eq!(got, want);
            assert_eq!(got.to_string(), s);
        }
        for (bad, why) in [
            ("parquet:x", "unknown format 'parquet', expected csv:PATH"),
            ("x.csv", "expected csv:PATH, images:DIR or idx:DIR"),
            ("csv:", "path after the prefix is empty"),
            ("CSV:x", "unknown format 'CSV'"),
        ] {
            let e = bad.parse::<DataSource>().unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
        // In a TOML config it is the same string.
        #[derive(serde::Deserialize, serde::Serialize)]
        struct C {
            source: DataSource,
        }
        let c: C = toml::from_str("source = \"images:pics\"").unwrap();
        assert_eq!(c.source, DataSource::Images("pics".into()));
        assert_eq!(
            toml::to_string(&c).unwrap().trim(),
            "source = \"images:pics\""
        );
        assert!(toml::from_str::<C>("source = \"tsv:x\"").is_err());
    }

    #[test]
    fn loads_csv_and_splits_deterministically() {
        let dir = TestDir::new("source-csv");
        let mut text = String::from("age,colour,height,bought\n");
        for i in 0..40 {
            let label = if i % 3 == 0 { "yes" } else { "no" };
            text.push_str(&format!("{i},red,{}.5,{label}\n", i * 2));
        }
        let p = dir.write("d.csv", text);
        let src: DataSource = format!("csv:{}", p.display()).parse().unwrap();
        assert_eq!(src.path(), p);
        let all = src.load(&tabular()).unwrap();
        assert_eq!(all.len(), 40);
        let (t1, v1) = src.load_split(&tabular(), 0.2, 42).unwrap();
        let (t2, v2) = src.load_split(&tabular(), 0.2, 42).unwrap();
        assert_eq!((t1.len(), v1.len()), (32, 8));
        assert_eq!((t1, v1), (t2, v2));
        let e = src
            .load(&images(2, 2, 1, &["a", "b"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not tabular"), "{e}");
    }

    #[test]
    fn idx_checks_schema_against_the_files() {
        let dir = TestDir::new("source-idx");
        let mut img = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2];
        img.extend([1, 2, 3, 4]);
        dir.write("train-images-idx3-ubyte", img);
        dir.write("train-labels-idx1-ubyte", [0, 0, 8, 1, 0, 0, 0, 2, 7, 3]);
        let src = DataSource::Idx(dir.path().to_path_buf());
        let digits: Vec<String> = (0..10).map(|d| d.to_string()).collect();
        let digits: Vec<&str> = digits.iter().map(String::as_str).collect();
        let d = src.load(&images(2, 1, 1, &digits)).unwrap();
        assert_eq!((d.len(), d.input_size(), d.labels()), (2, 2, &[7, 3][..]));
        let e = src.load(&images(1, 2, 1, &digits)).unwrap_err().to_string();
        assert!(
            e.contains("IDX images are 2x1 but the schema says 1x2"),
            "{e}"
        );
        let e = src.load(&images(2, 1, 3, &digits)).unwrap_err().to_string();
        assert!(e.contains("3 channels"), "{e}");
        let e = src
            .load(&images(2, 1, 1, &["a", "b"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 classes"), "{e}");
    }

    /// The shared MNIST copy through `idx:`; it must be there (a missing copy fails the test).
    #[test]
    fn real_mnist_through_idx_source() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/mnist");
        assert!(dir.is_dir(), "{} is missing", dir.display());
        let digits: Vec<String> = (0..10).map(|d| d.to_string()).collect();
        let digits: Vec<&str> = digits.iter().map(String::as_str).collect();
        let src: DataSource = format!("idx:{}", dir.display()).parse().unwrap();
        let (train, valid) = src.load_split(&images(28, 28, 1, &digits), 0.1, 1).unwrap();
        assert_eq!((train.len(), valid.len()), (54000, 6000));
        assert!(
            valid.label_counts().iter().all(|&c| c > 450),
            "{:?}",
            valid.label_counts()
        );
    }
}
