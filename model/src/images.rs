//! A node's own images: one sub-folder per class, PNG or JPEG files inside, read against an
//! images [`DataSchema`].
//!
//! ```text
//! DIR/cat/001.png
//! DIR/cat/002.jpg
//! DIR/dog/a.jpeg
//! ```
//!
//! Folder names must be the schema's class names (a class may have no folder: a node need not
//! hold every class). Each image is converted to grey or RGB as the schema says (alpha dropped),
//! resized to the schema's size (bilinear; no resampling when it already has that size; with
//! `resize = false` an image of another size is an error naming it) and kept
//! as `u8` pixels, channel-major. Folders and files are read in name order, so the same directory
//! always gives the same dataset. Hidden entries (`.name`) are skipped; anything else that is not
//! a class folder or an image in one is an error naming it.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat};

use crate::compact::{CompactDataset, Features};
use crate::data::data_err;
use crate::error::{Error, Result};
use crate::schema::{DataSchema, InputSpec};

/// Largest side, in pixels, of an image file that is decoded at all.
pub const MAX_SOURCE_SIDE: u32 = 16_384;
/// Most bytes a decoder may allocate for one image.
pub const MAX_DECODE_BYTES: u64 = 512 << 20;
/// Most images read from one directory.
pub const MAX_IMAGES: usize = 10_000_000;
/// Most pixel bytes held for one directory (4 GiB).
pub const MAX_PIXEL_BYTES: u64 = 1 << 32;
/// Largest image file read, in bytes (a compressed image this large is not training data).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// File extensions (lower-cased) taken as images.
const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A directory's entries sorted by name, hidden ones left out.
fn sorted_entries(dir: &Path) -> Result<Vec<(String, PathBuf, bool)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(String::from) else {
            return Err(data_err(&path, "file name is not UTF-8"));
        };
        if name.starts_with('.') {
            continue;
        }
        // Follows symbolic links, as reading the file would.
        let is_dir = std::fs::metadata(&path)
            .map_err(|e| io_err(&path, e))?
            .is_dir();
        out.push((name, path, is_dir));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn is_image_name(name: &str) -> bool {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Loads `dir` as the schema's image data.
pub fn load_image_folder(dir: &Path, schema: &DataSchema) -> Result<CompactDataset> {
    schema.validate()?;
    let InputSpec::Images {
        width,
        height,
        channels,
        resize,
    } = schema.input
    else {
        return Err(Error::Schema(format!(
            "{} is an image folder but the schema's input is not images",
            dir.display()
        )));
    };
    if !dir.is_dir() {
        return Err(data_err(dir, "image folder not found"));
    }
    let per_image = schema.input_size();
    let max_images = usize::try_from(MAX_PIXEL_BYTES / per_image as u64)
        .unwrap_or(usize::MAX)
        .min(MAX_IMAGES);
    let mut pixels: Vec<u8> = Vec::new();
    let mut labels: Vec<u16> = Vec::new();
    for (name, path, is_dir) in sorted_entries(dir)? {
        if !is_dir {
            if is_image_name(&name) {
                return Err(data_err(
                    &path,
                    "image outside a class folder (put each image in its class's folder)",
                ));
            }
            continue; // A README or licence beside the class folders.
        }
        let Some(class) = schema.class_index(&name) else {
            return Err(data_err(
                &path,
                format!(
                    "folder '{name}' is not one of the schema's classes ({})",
                    schema.classes.join(", ")
                ),
            ));
        };
        for (file, fpath, file_is_dir) in sorted_entries(&path)? {
            if file_is_dir {
                return Err(data_err(&fpath, "a folder inside a class folder"));
            }
            if !is_image_name(&file) {
                return Err(data_err(&fpath, "not a .png, .jpg or .jpeg file"));
            }
            if labels.len() >= max_images {
                return Err(data_err(
                    dir,
                    format!("more than {max_images} images of {per_image} bytes"),
                ));
            }
            let img = decode(&fpath)?;
            if !resize && (img.width(), img.height()) != (width, height) {
                return Err(data_err(
                    &fpath,
                    format!(
                        "image is {}x{} but the schema says {width}x{height} and resize = false",
                        img.width(),
                        img.height()
                    ),
                ));
            }
            push_pixels(&mut pixels, img, width, height, channels);
            labels.push(class);
        }
    }
    if labels.is_empty() {
        return Err(data_err(
            dir,
            format!(
                "no images: expected class folders ({}) holding PNG or JPEG files",
                schema.classes.join(", ")
            ),
        ));
    }
    CompactDataset::new(
        Features::Pixels(pixels),
        labels,
        per_image,
        schema.num_classes(),
    )
}

/// Decodes one PNG or JPEG file (format from its content, not its name), within size limits.
fn decode(path: &Path) -> Result<DynamicImage> {
    let size = std::fs::metadata(path).map_err(|e| io_err(path, e))?.len();
    if size > MAX_FILE_BYTES {
        return Err(data_err(
            path,
            format!("{size} bytes; image files over {MAX_FILE_BYTES} bytes are refused"),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let mut reader = image::io::Reader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| io_err(path, e))?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg) => {}
        _ => return Err(data_err(path, "not a PNG or JPEG image")),
    }
    let mut limits = image::io::Limits::default();
    limits.max_image_width = Some(MAX_SOURCE_SIDE);
    limits.max_image_height = Some(MAX_SOURCE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    reader
        .decode()
        .map_err(|e| data_err(path, format!("cannot decode image: {e}")))
}

/// Appends `img` converted to `channels`, resized to `width` x `height`, channel-major.
fn push_pixels(out: &mut Vec<u8>, img: DynamicImage, width: u32, height: u32, channels: u8) {
    let resize = img.width() != width || img.height() != height;
    if channels == 1 {
        let mut g = img.into_luma8();
        if resize {
            g = image::imageops::resize(&g, width, height, FilterType::Triangle);
        }
        out.extend_from_slice(g.as_raw());
    } else {
        let mut rgb = img.into_rgb8();
        if resize {
            rgb = image::imageops::resize(&rgb, width, height, FilterType::Triangle);
        }
        // Interleaved RGBRGB... to planes RR..GG..BB.. (the layout a convolution takes).
        let raw = rgb.as_raw();
        for c in 0..3 {
            out.extend(raw.iter().skip(c).step_by(3));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::tests::images;
    use crate::testutil::TestDir;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    fn png(img: &DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn jpeg(img: &DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    fn grey(w: u32, h: u32, f: impl Fn(u32, u32) -> u8) -> DynamicImage {
        DynamicImage::ImageLuma8(GrayImage::from_fn(w, h, |x, y| Luma([f(x, y)])))
    }

    #[test]
    fn grey_pngs_keep_exact_pixels_and_class_order() {
        let dir = TestDir::new("img-grey");
        // The schema's class order (dog, cat) is not the folders' name order (cat, dog).
        let schema = images(3, 2, 1, &["dog", "cat"]);
        dir.write("cat/2.png", png(&grey(3, 2, |x, y| (10 * x + y) as u8)));
        dir.write("cat/1.PNG", png(&grey(3, 2, |_, _| 255)));
        dir.write("dog/x.png", png(&grey(3, 2, |x, _| x as u8)));
        dir.write("README.txt", "about this data");
        dir.write(".DS_Store", "junk");
        let d = load_image_folder(dir.path(), &schema).unwrap();
        assert_eq!((d.len(), d.input_size(), d.num_classes()), (3, 6, 2));
        // cat/1.PNG, cat/2.png, then dog/x.png; cat is class 1.
        assert_eq!(d.labels(), &[1, 1, 0]);
        let Features::Pixels(p) = d.features() else {
            panic!("images are pixels")
        };
        assert_eq!(&p[..6], &[255; 6]);
        assert_eq!(&p[6..12], &[0, 10, 20, 1, 11, 21]);
        assert_eq!(&p[12..], &[0, 1, 2, 0, 1, 2]);
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        d.batch_into(&[1], &mut xs, &mut ys).unwrap();
        assert_eq!(xs[1], 10.0 / 255.0);
        assert_eq!(ys, vec![1]);
    }

    #[test]
    fn rgb_is_channel_major_and_grey_converts() {
        let dir = TestDir::new("img-rgb");
        let rgb = RgbImage::from_fn(2, 1, |x, _| Rgb([x as u8 + 1, 100, 200]));
        dir.write("a/p.png", png(&DynamicImage::ImageRgb8(rgb)));
        dir.write("b/g.png", png(&grey(2, 1, |_, _| 7)));
        let d = load_image_folder(dir.path(), &images(2, 1, 3, &["a", "b"])).unwrap();
        let Features::Pixels(p) = d.features() else {
            panic!("images are pixels")
        };
        assert_eq!(&p[..6], &[1, 2, 100, 100, 200, 200]);
        assert_eq!(&p[6..], &[7; 6]);
        // The same RGB file read as grey gives one plane.
        let d = load_image_folder(dir.path(), &images(2, 1, 1, &["a", "b"])).unwrap();
        assert_eq!(d.input_size(), 2);
    }

    #[test]
    fn jpegs_and_other_sizes_are_resized() {
        let dir = TestDir::new("img-resize");
        // A flat image stays flat when resized; JPEG is lossy, so compare with a tolerance.
        dir.write("a/big.jpg", jpeg(&grey(40, 30, |_, _| 128)));
        dir.write("b/small.png", png(&grey(2, 2, |_, _| 60)));
        let d = load_image_folder(dir.path(), &images(8, 4, 1, &["a", "b"])).unwrap();
        assert_eq!((d.len(), d.input_size()), (2, 32));
        let Features::Pixels(p) = d.features() else {
            panic!("images are pixels")
        };
        assert!(p[..32].iter().all(|&v| v.abs_diff(128) <= 2), "{p:?}");
        assert!(p[32..].iter().all(|&v| v == 60), "{p:?}");
    }

    #[test]
    fn errors_name_the_folder_or_file() {
        let schema = images(2, 2, 1, &["a", "b"]);
        let dir = TestDir::new("img-err");
        dir.write("a/ok.png", png(&grey(2, 2, |_, _| 1)));
        dir.write("zebra/z.png", png(&grey(2, 2, |_, _| 1)));
        let e = load_image_folder(dir.path(), &schema)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("zebra") && e.contains("not one of the schema's classes (a, b)"),
            "{e}"
        );

        let dir = TestDir::new("img-err");
        dir.write("a/broken.png", b"\x89PNG\r\n\x1a\nnot really");
        let e = load_image_folder(dir.path(), &schema)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a/broken.png: cannot decode image"), "{e}");

        let dir = TestDir::new("img-err");
        dir.write("a/text.jpg", "hello");
        let e = load_image_folder(dir.path(), &schema)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a/text.jpg: not a PNG or JPEG"), "{e}");

        let dir = TestDir::new("img-err");
        dir.write("a/notes.txt", "hello");
        let e = load_image_folder(dir.path(), &schema)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a/notes.txt: not a .png"), "{e}");

        let dir = TestDir::new("img-err");
        dir.write("a/deeper/x.png", png(&grey(2, 2, |_, _| 1)));
        let e = load_image_folder(dir.path(), &schema)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a/deeper: a folder inside a class folder"),
            "{e}"
        );

        let dir = TestDir::new("img-err");
        dir.write("loose.png", png(&grey(2, 2, |_, _| 1)));
        let e = load_image_folder(dir.path(), &schema)
            .unwrap_err()
            .to_string();
        assert!(e.contains("loose.png: image outside a class folder"), "{e}");

        let dir = TestDir::new("img-err");
        std::fs::create_dir(dir.path().join("a")).unwrap();
        let e = load_image_folder(dir.path(), &schema)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no images"), "{e}");

        let e = load_image_folder(&dir.path().join("gone"), &schema)
            .unwrap_err()
            .to_string();
        assert!(e.contains("gone: image folder not found"), "{e}");

        let e = load_image_folder(dir.path(), &crate::schema::tests::tabular())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not images"), "{e}");
    }
}
