//! What a cohort's data looks like: the genesis `[data]` section.
//!
//! Every node of a cohort trains the same model, so every node must turn its own files into the
//! same input vector and the same class numbering. A [`DataSchema`] fixes both: the task, the class
//! names (a class's number is its position in `classes`), and how a sample becomes `input_size()`
//! floats — tabular columns (numeric, optionally normalised, or one-hot categorical) or images
//! (resized to one size and scaled to [0, 1]).
//!
//! ```toml
//! [data]
//! task = "classification"
//! classes = ["setosa", "versicolor", "virginica"]
//!
//! [data.input]
//! kind = "tabular"
//! label = "species"
//! features = [
//!   { name = "petal_length", kind = "numeric", mean = 3.76, std = 1.76 },
//!   { name = "colour", kind = "categorical", values = ["red", "blue"] },
//! ]
//! ```
//!
//! [`DataSchema::validate`] checks every range once, so loaders and the model can rely on it.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Fewest classes a classification task can have.
pub const MIN_CLASSES: usize = 2;
/// Most classes a schema may name (labels are stored as `u16`).
pub const MAX_CLASSES: usize = 1000;
/// Largest image side, in pixels, that a schema may ask for.
pub const MAX_IMAGE_SIDE: u32 = 1024;
/// Most tabular features (columns used as input) a schema may name.
pub const MAX_FEATURES: usize = 4096;
/// Most values one categorical feature may take (each becomes one input).
pub const MAX_CATEGORIES: usize = 1000;
/// Most input floats a tabular schema may produce per sample (one-hot columns included).
pub const MAX_TABULAR_INPUTS: usize = 65_536;
/// Longest class, feature or category name, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// The learning task. Only classification exists today; the field is there so that the genesis
/// file says what it means and a later task is a new variant, not a silent reinterpretation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// One label per sample, out of `classes`.
    Classification,
}

/// The shape and meaning of a cohort's data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSchema {
    /// What is learned.
    pub task: Task,
    /// Class names; class `i` is `classes[i]`, so the order is part of the schema.
    pub classes: Vec<String>,
    /// How one sample becomes the model's input vector.
    pub input: InputSpec,
}

/// How a sample becomes input floats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum InputSpec {
    /// Rows of a table (CSV with a header): the named feature columns in this order, and the
    /// label column holding a class name.
    Tabular {
        /// Input columns, in the order their values enter the input vector.
        features: Vec<Feature>,
        /// The column holding each row's class name.
        label: String,
    },
    /// Images, resized to `width` x `height` (unless `resize` is false) and scaled to [0, 1]; the
    /// input vector is
    /// channel-major (`channels` planes of `height` rows of `width` pixels).
    Images {
        /// Width in pixels after resizing.
        width: u32,
        /// Height in pixels after resizing.
        height: u32,
        /// 1 (grey) or 3 (RGB; an alpha channel is dropped).
        channels: u8,
        /// Whether an image of another size is resized (bilinear) to `width` x `height`; when
        /// false, such an image is an error naming the file. Default true.
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        resize: bool,
    },
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// One input column of a table. In TOML: `{ name = "age", kind = "numeric", mean = 40.0, std = 10.0 }`
/// or `{ name = "colour", kind = "categorical", values = ["red", "blue"] }`; a field that does not
/// belong to the kind (a typo, `values` on a numeric column) is an error, not ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawFeature", into = "RawFeature")]
pub struct Feature {
    /// The column's name in the header.
    pub name: String,
    /// How its values become inputs.
    pub kind: FeatureKind,
}

/// How a column's text becomes inputs.
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureKind {
    /// A finite number, one input: `(v - mean) / std` when both are given, `v` as is otherwise.
    /// The values are fixed in the schema (not fitted per node), so that every node normalises
    /// alike.
    Numeric {
        /// Subtracted before dividing by `std`.
        mean: Option<f32>,
        /// Positive divisor.
        std: Option<f32>,
    },
    /// One of `values`, one-hot encoded: `values.len()` inputs, a 1 at the value's position.
    Categorical {
        /// The allowed values, in one-hot order.
        values: Vec<String>,
    },
}

/// A feature's flat serde form (serde's `flatten` cannot deny unknown fields).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeature {
    name: String,
    kind: RawKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mean: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    std: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    values: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RawKind {
    Numeric,
    Categorical,
}

impl TryFrom<RawFeature> for Feature {
    type Error = String;
    fn try_from(r: RawFeature) -> Result<Self, String> {
        let kind = match (r.kind, r.values) {
            (RawKind::Numeric, None) => FeatureKind::Numeric {
                mean: r.mean,
                std: r.std,
            },
            (RawKind::Numeric, Some(_)) => {
                return Err(format!(
                    "feature '{}': a numeric feature has no values",
                    r.name
                ));
            }
            (RawKind::Categorical, Some(values)) if r.mean.is_none() && r.std.is_none() => {
                FeatureKind::Categorical { values }
            }
            (RawKind::Categorical, Some(_)) => {
                return Err(format!(
                    "feature '{}': a categorical feature has no mean or std",
                    r.name
                ));
            }
            (RawKind::Categorical, None) => {
                return Err(format!(
                    "feature '{}': a categorical feature needs values",
                    r.name
                ));
            }
        };
        Ok(Feature { name: r.name, kind })
    }
}

impl From<Feature> for RawFeature {
    fn from(f: Feature) -> Self {
        match f.kind {
            FeatureKind::Numeric { mean, std } => RawFeature {
                name: f.name,
                kind: RawKind::Numeric,
                mean,
                std,
                values: None,
            },
            FeatureKind::Categorical { values } => RawFeature {
                name: f.name,
                kind: RawKind::Categorical,
                mean: None,
                std: None,
                values: Some(values),
            },
        }
    }
}

impl FeatureKind {
    /// How many inputs this feature produces.
    pub fn width(&self) -> usize {
        match self {
            Self::Numeric { .. } => 1,
            Self::Categorical { values } => values.len(),
        }
    }
}

fn schema_err(what: impl Into<String>) -> Error {
    Error::Schema(what.into())
}

/// Checks a name is non-empty, not padded with spaces and not too long.
fn check_name(what: &str, name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(schema_err(format!("{what} name is empty")));
    }
    if name.trim() != name {
        return Err(schema_err(format!(
            "{what} name '{name}' has leading or trailing spaces"
        )));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(schema_err(format!(
            "{what} name '{}...' is longer than {MAX_NAME_LEN} bytes",
            name.chars().take(32).collect::<String>()
        )));
    }
    Ok(())
}

/// Checks names are valid and pairwise distinct.
fn check_unique<'a>(what: &str, names: impl IntoIterator<Item = &'a str>) -> Result<()> {
    let mut seen = HashSet::new();
    for name in names {
        check_name(what, name)?;
        if !seen.insert(name) {
            return Err(schema_err(format!("duplicate {what} name '{name}'")));
        }
    }
    Ok(())
}

impl DataSchema {
    /// Checks every range and name; loaders call it before reading any file.
    pub fn validate(&self) -> Result<()> {
        let n = self.classes.len();
        if n == 0 {
            return Err(schema_err("classes is empty"));
        }
        if !(MIN_CLASSES..=MAX_CLASSES).contains(&n) {
            return Err(schema_err(format!(
                "{n} classes; a classification task needs {MIN_CLASSES} to {MAX_CLASSES}"
            )));
        }
        check_unique("class", self.classes.iter().map(String::as_str))?;
        match &self.input {
            InputSpec::Tabular { features, label } => validate_tabular(features, label),
            InputSpec::Images {
                width,
                height,
                channels,
                ..
            } => {
                for (what, side) in [("width", *width), ("height", *height)] {
                    if !(1..=MAX_IMAGE_SIDE).contains(&side) {
                        return Err(schema_err(format!(
                            "image {what} {side} is out of range 1..={MAX_IMAGE_SIDE}"
                        )));
                    }
                }
                if !matches!(channels, 1 | 3) {
                    return Err(schema_err(format!(
                        "image channels {channels}: expected 1 (grey) or 3 (RGB)"
                    )));
                }
                Ok(())
            }
        }
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Number of input floats per sample.
    pub fn input_size(&self) -> usize {
        match &self.input {
            InputSpec::Tabular { features, .. } => features.iter().map(|f| f.kind.width()).sum(),
            InputSpec::Images {
                width,
                height,
                channels,
                ..
            } => *width as usize * *height as usize * *channels as usize,
        }
    }

    /// The model's input: flat features for a table, an image for images.
    pub fn input_shape(&self) -> crate::spec::InputShape {
        match &self.input {
            InputSpec::Tabular { .. } => crate::spec::InputShape::Flat(self.input_size()),
            InputSpec::Images {
                width,
                height,
                channels,
                ..
            } => crate::spec::InputShape::Image {
                channels: usize::from(*channels),
                height: *height as usize,
                width: *width as usize,
            },
        }
    }

    /// The class number of `name`, if it is one of the classes.
    pub fn class_index(&self, name: &str) -> Option<u16> {
        self.classes
            .iter()
            .position(|c| c == name)
            .and_then(|i| u16::try_from(i).ok())
    }
}

fn validate_tabular(features: &[Feature], label: &str) -> Result<()> {
    if features.is_empty() {
        return Err(schema_err("tabular input has no features"));
    }
    if features.len() > MAX_FEATURES {
        return Err(schema_err(format!(
            "{} features; at most {MAX_FEATURES}",
            features.len()
        )));
    }
    check_name("label column", label)?;
    check_unique(
        "feature",
        features
            .iter()
            .map(|f| f.name.as_str())
            .chain(std::iter::once(label)),
    )?;
    let mut inputs = 0usize;
    for f in features {
        match &f.kind {
            FeatureKind::Numeric { mean, std } => match (mean, std) {
                (None, None) => {}
                (Some(m), Some(s)) => {
                    if !m.is_finite() {
                        return Err(schema_err(format!(
                            "feature '{}': mean {m} is not finite",
                            f.name
                        )));
                    }
                    if !(s.is_finite() && *s > 0.0) {
                        return Err(schema_err(format!(
                            "feature '{}': std {s} must be positive and finite",
                            f.name
                        )));
                    }
                }
                _ => {
                    return Err(schema_err(format!(
                        "feature '{}': give both mean and std, or neither",
                        f.name
                    )));
                }
            },
            FeatureKind::Categorical { values } => {
                if values.is_empty() {
                    return Err(schema_err(format!(
                        "feature '{}': categorical with no values",
                        f.name
                    )));
                }
                if values.len() > MAX_CATEGORIES {
                    return Err(schema_err(format!(
                        "feature '{}': {} values; at most {MAX_CATEGORIES}",
                        f.name,
                        values.len()
                    )));
                }
                check_unique(
                    &format!("feature '{}' value", f.name),
                    values.iter().map(String::as_str),
                )?;
            }
        }
        inputs += f.kind.width();
    }
    if inputs > MAX_TABULAR_INPUTS {
        return Err(schema_err(format!(
            "tabular input is {inputs} floats per sample; at most {MAX_TABULAR_INPUTS}"
        )));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small tabular schema used by the loaders' tests too.
    pub(crate) fn tabular() -> DataSchema {
        DataSchema {
            task: Task::Classification,
            classes: vec!["no".into(), "yes".into()],
            input: InputSpec::Tabular {
                features: vec![
                    Feature {
                        name: "age".into(),
                        kind: FeatureKind::Numeric {
                            mean: Some(40.0),
                            std: Some(10.0),
                        },
                    },
                    Feature {
                        name: "colour".into(),
                        kind: FeatureKind::Categorical {
                            values: vec!["red".into(), "green".into(), "blue".into()],
                        },
                    },
                    Feature {
                        name: "height".into(),
                        kind: FeatureKind::Numeric {
                            mean: None,
                            std: None,
                        },
                    },
                ],
                label: "bought".into(),
            },
        }
    }

    pub(crate) fn images(width: u32, height: u32, channels: u8, classes: &[&str]) -> DataSchema {
        DataSchema {
            task: Task::Classification,
            classes: classes.iter().map(|c| c.to_string()).collect(),
            input: InputSpec::Images {
                width,
                height,
                channels,
                resize: true,
            },
        }
    }

    fn err(s: &DataSchema) -> String {
        s.validate().unwrap_err().to_string()
    }

    #[test]
    fn sizes_count_one_hot_and_pixels() {
        let t = tabular();
        t.validate().unwrap();
        assert_eq!((t.input_size(), t.num_classes()), (1 + 3 + 1, 2));
        assert_eq!(t.class_index("yes"), Some(1));
        assert_eq!(t.class_index("Yes"), None);
        let i = images(28, 28, 1, &["a", "b", "c"]);
        i.validate().unwrap();
        assert_eq!((i.input_size(), i.num_classes()), (784, 3));
        assert_eq!(images(32, 16, 3, &["a", "b"]).input_size(), 32 * 16 * 3);
    }

    #[test]
    fn class_counts_and_names_are_checked() {
        let mut s = tabular();
        s.classes.clear();
        assert!(err(&s).contains("classes is empty"), "{}", err(&s));
        s.classes = vec!["only".into()];
        assert!(err(&s).contains("1 classes"), "{}", err(&s));
        s.classes = (0..1001).map(|i| i.to_string()).collect();
        assert!(err(&s).contains("1001 classes"), "{}", err(&s));
        s.classes = (0..1000).map(|i| i.to_string()).collect();
        s.validate().unwrap();
        s.classes = vec!["a".into(), "b".into(), "a".into()];
        assert!(err(&s).contains("duplicate class name 'a'"), "{}", err(&s));
        s.classes = vec!["a".into(), " b".into()];
        assert!(err(&s).contains("spaces"), "{}", err(&s));
        s.classes = vec!["a".into(), "".into()];
        assert!(err(&s).contains("class name is empty"), "{}", err(&s));
    }

    #[test]
    fn image_sizes_and_channels_are_checked() {
        for (w, h, c, want) in [
            (0, 28, 1, "width 0"),
            (28, 1025, 1, "height 1025"),
            (28, 28, 2, "channels 2"),
            (28, 28, 4, "channels 4"),
        ] {
            let e = err(&images(w, h, c, &["a", "b"]));
            assert!(e.contains(want), "{e}");
        }
        images(1024, 1, 3, &["a", "b"]).validate().unwrap();
    }

    #[test]
    fn tabular_features_are_checked() {
        let set = |f: &dyn Fn(&mut Vec<Feature>, &mut String)| {
            let mut s = tabular();
            if let InputSpec::Tabular { features, label } = &mut s.input {
                f(features, label);
            }
            err(&s)
        };
        let e = set(&|f, _| f.clear());
        assert!(e.contains("no features"), "{e}");
        let e = set(&|f, _| f[2].name = "age".into());
        assert!(e.contains("duplicate feature name 'age'"), "{e}");
        let e = set(&|_, l| *l = "colour".into());
        assert!(e.contains("duplicate feature name 'colour'"), "{e}");
        let e = set(&|f, _| {
            f[0].kind = FeatureKind::Numeric {
                mean: Some(1.0),
                std: None,
            }
        });
        assert!(e.contains("both mean and std"), "{e}");
        let e = set(&|f, _| {
            f[0].kind = FeatureKind::Numeric {
                mean: Some(1.0),
                std: Some(0.0),
            }
        });
        assert!(e.contains("'age': std 0 must be positive"), "{e}");
        let e = set(&|f, _| {
            f[0].kind = FeatureKind::Numeric {
                mean: Some(f32::NAN),
                std: Some(1.0),
            }
        });
        assert!(e.contains("not finite"), "{e}");
        let e = set(&|f, _| f[1].kind = FeatureKind::Categorical { values: vec![] });
        assert!(e.contains("'colour': categorical with no values"), "{e}");
        let e = set(&|f, _| {
            f[1].kind = FeatureKind::Categorical {
                values: vec!["x".into(), "x".into()],
            }
        });
        assert!(
            e.contains("duplicate feature 'colour' value name 'x'"),
            "{e}"
        );
        let e = set(&|f, _| {
            f[1].kind = FeatureKind::Categorical {
                values: (0..1001).map(|i| i.to_string()).collect(),
            }
        });
        assert!(e.contains("1001 values"), "{e}");
        let e = set(&|f, _| {
            *f = (0..66)
                .map(|i| Feature {
                    name: format!("c{i}"),
                    kind: FeatureKind::Categorical {
                        values: (0..1000).map(|v| v.to_string()).collect(),
                    },
                })
                .collect()
        });
        assert!(e.contains("66000 floats per sample"), "{e}");
    }

    #[test]
    fn toml_round_trip_is_the_genesis_section() {
        let text = r#"
task = "classification"
classes = ["no", "yes"]

[input]
kind = "tabular"
label = "bought"
features = [
  { name = "age", kind = "numeric", mean = 40.0, std = 10.0 },
  { name = "colour", kind = "categorical", values = ["red", "green", "blue"] },
  { name = "height", kind = "numeric" },
]
"#;
        let s: DataSchema = toml::from_str(text).unwrap();
        assert_eq!(s, tabular());
        let back: DataSchema = toml::from_str(&toml::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);

        let text = r#"
task = "classification"
classes = ["cat", "dog"]
input = { kind = "images", width = 32, height = 24, channels = 3 }
"#;
        let s: DataSchema = toml::from_str(text).unwrap();
        assert_eq!(s, images(32, 24, 3, &["cat", "dog"]));
        let back: DataSchema = toml::from_str(&toml::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);

        // Typos are errors, not silently ignored fields.
        let bad = text.replace("classes", "clases");
        assert!(toml::from_str::<DataSchema>(&bad).is_err());
        let bad = text.replace("channels", "chanels");
        assert!(toml::from_str::<DataSchema>(&bad).is_err());
        let bad = text.replace("\"images\"", "\"audio\"");
        assert!(toml::from_str::<DataSchema>(&bad).is_err());
        let bad = text.replace("classification", "regression");
        assert!(toml::from_str::<DataSchema>(&bad).is_err());

        let feature = |f: &str| {
            let t = format!(
                "task = \"classification\"\nclasses = [\"a\", \"b\"]\n\
                 input = {{ kind = \"tabular\", label = \"y\", features = [{f}] }}"
            );
            toml::from_str::<DataSchema>(&t).map_err(|e| e.to_string())
        };
        feature(r#"{ name = "x", kind = "numeric" }"#).unwrap();
        for (bad, want) in [
            (r#"{ name = "x", kind = "numeric", stdd = 1.0 }"#, "stdd"),
            (
                r#"{ name = "x", kind = "numeric", values = ["a"] }"#,
                "has no values",
            ),
            (r#"{ name = "x", kind = "categorical" }"#, "needs values"),
            (
                r#"{ name = "x", kind = "categorical", values = ["a"], mean = 1.0 }"#,
                "has no mean",
            ),
            (r#"{ name = "x", kind = "date" }"#, "date"),
        ] {
            let e = feature(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
