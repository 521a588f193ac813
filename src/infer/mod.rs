//! In-process image classification with an ImageNet model through ONNX Runtime.
//!
//! [`runtime`] finds and loads the ONNX Runtime library and the model,
//! [`preprocess`] turns RGB images and I420 frames into the input tensor,
//! [`worker`] owns the session on one thread and serves requests from any
//! number of callers, and [`topk`] turns logits into named classes.
//!
//! This module never touches the network, cameras or codecs.

pub mod preprocess;
pub mod runtime;
pub mod topk;
pub mod worker;

use std::path::PathBuf;

pub use preprocess::{INPUT_LEN, INPUT_SIDE, Preprocessor};
pub use runtime::{Model, resolve_dylib};
pub use topk::{ClassScore, Labels, softmax, top_k};
pub use worker::{Classification, InferenceWorker, Offer, Reply};

/// Everything that can go wrong loading or running the classifier. Each message
/// names the file involved and, where the user can fix it, how.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error(
        "ONNX Runtime library not found (looked for {searched}); run `scripts/setup` to install it into .venv, or set ORT_DYLIB_PATH to libonnxruntime.so"
    )]
    RuntimeNotFound { searched: String },
    #[error(
        "ONNX Runtime library {path} (from {source_of_path}) could not be loaded: {reason}; run `scripts/setup`, or point ORT_DYLIB_PATH at libonnxruntime.so.1.32.0"
    )]
    RuntimeLoad { path: PathBuf, source_of_path: &'static str, reason: String },
    #[error("ONNX Runtime could not start: {0}")]
    Runtime(String),
    #[error("model file {path} not found; run `scripts/setup` to export it, or set inference.model_path")]
    ModelMissing { path: PathBuf },
    #[error("model file {path} is not a usable ONNX model: {reason}; re-run `scripts/setup` to export it again")]
    ModelInvalid { path: PathBuf, reason: String },
    #[error("labels file {path} could not be read: {reason}; run `scripts/setup` to write it")]
    LabelsUnreadable { path: PathBuf, reason: String },
    #[error(
        "labels file {path} has {labels} names but the model {model} outputs {classes} classes; use the labels that belong to the model"
    )]
    LabelsCountMismatch { path: PathBuf, model: PathBuf, labels: usize, classes: usize },
    #[error("inference failed: {0}")]
    Run(String),
    #[error("the inference queue is full; request dropped")]
    Busy,
    #[error("the inference worker has stopped")]
    Stopped,
}
