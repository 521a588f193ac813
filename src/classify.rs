//! The `infercast classify PHOTO...` command: still photos in, one JSON line of
//! top-5 classes per photo out.

use std::io::Write;
use std::path::{Path, PathBuf};

use image::ImageReader;
use serde::Serialize;

use crate::infer::{ClassScore, INPUT_LEN, InferError, InferenceWorker, Preprocessor};

/// Largest photo accepted, in pixels (100 MP). Bigger files are refused before
/// they are decoded, so a huge image cannot exhaust memory.
pub const MAX_PIXELS: u64 = 100_000_000;

/// A photo that cannot be classified.
#[derive(Debug, thiserror::Error)]
pub enum PhotoError {
    #[error("{path}: no such file")]
    NotFound { path: PathBuf },
    #[error("{path}: cannot read the file: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("{path}: not an image infercast can read (PNG, JPEG, BMP, WebP, GIF or TIFF): {reason}")]
    NotAnImage { path: PathBuf, reason: String },
    #[error(
        "{path}: image is {width}x{height} pixels; the largest accepted is 100 megapixels (e.g. 10000x10000), scale it down first"
    )]
    TooLarge { path: PathBuf, width: u32, height: u32 },
}

/// An 8-bit RGB photo, `width × height × 3` bytes, row-major.
pub struct Photo {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

/// Reads a photo, refusing non-images and pictures over [`MAX_PIXELS`] before
/// decoding them.
pub fn load_photo(path: &Path) -> Result<Photo, PhotoError> {
    let path_buf = || path.to_owned();
    if !path.exists() {
        return Err(PhotoError::NotFound { path: path_buf() });
    }
    let not_image = |reason: String| PhotoError::NotAnImage { path: path_buf(), reason };
    let open = || -> Result<ImageReader<_>, PhotoError> {
        ImageReader::open(path)
            .and_then(|r| r.with_guessed_format())
            .map_err(|e| PhotoError::Unreadable { path: path_buf(), reason: e.to_string() })
    };
    let reader = open()?;
    if reader.format().is_none() {
        return Err(not_image("unrecognised file format".into()));
    }
    let (width, height) = reader.into_dimensions().map_err(|e| not_image(e.to_string()))?;
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(PhotoError::TooLarge { path: path_buf(), width, height });
    }
    let image = open()?.decode().map_err(|e| not_image(e.to_string()))?;
    let rgb = image.into_rgb8();
    Ok(Photo { width: rgb.width(), height: rgb.height(), rgb: rgb.into_raw() })
}

/// One output line of `infercast classify`.
#[derive(Serialize)]
struct ClassifyLine<'a> {
    path: &'a Path,
    model: &'a str,
    top5: &'a [ClassScore],
    infer_ms: f64,
}

/// Errors of one photo in the classify command.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error(transparent)]
    Photo(#[from] PhotoError),
    #[error("{path}: {source}")]
    Infer { path: PathBuf, source: InferError },
}

/// Classifies each photo in turn, writing one JSON line per photo to `out` and
/// returning the errors of those that failed (the others are still classified).
pub fn classify_photos(
    worker: &InferenceWorker,
    model: &str,
    photos: &[PathBuf],
    out: &mut dyn Write,
) -> Vec<ClassifyError> {
    let mut pre = Preprocessor::new();
    let mut errors = Vec::new();
    for path in photos {
        let result = load_photo(path).map_err(ClassifyError::from).and_then(|photo| {
            let mut tensor = vec![0.0; INPUT_LEN];
            pre.rgb_to_tensor(
                &photo.rgb,
                photo.width as usize,
                photo.height as usize,
                photo.width as usize * 3,
                &mut tensor,
            );
            worker.classify_blocking(tensor).map_err(|source| ClassifyError::Infer { path: path.clone(), source })
        });
        match result {
            Ok(c) => {
                let line = ClassifyLine { path, model, top5: &c.top, infer_ms: (c.infer_ms * 1000.0).round() / 1000.0 };
                let json = serde_json::to_string(&line).expect("the line holds only strings and numbers");
                if let Err(e) = writeln!(out, "{json}") {
                    tracing::error!(error = %e, "cannot write output");
                }
            }
            Err(e) => errors.push(e),
        }
    }
    errors
}
