//! Finding and loading the ONNX Runtime shared library and the model file.
//!
//! The library is loaded at run time (`ort`'s `load-dynamic`) from, in order:
//! env `ORT_DYLIB_PATH`, the configured `inference.ort_dylib_path`, or the
//! project venv that `scripts/setup` creates (`.venv/lib/python3.*/site-packages/onnxruntime/capi/`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::ValueType;

use super::{INPUT_SIDE, InferError, Labels};

/// The one ONNX Runtime environment of this process (ONNX Runtime allows one).
static ENVIRONMENT: OnceLock<ort::environment::Environment> = OnceLock::new();

/// Directories searched for the project's files (`.venv`, `models/`): the current
/// directory, then the source tree the binary was built from.
pub fn project_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if !roots.contains(&built) {
        roots.push(built);
    }
    roots
}

/// `path` as is when absolute, else the first existing `root/path` over
/// [`project_roots`] (or the first candidate, so an error names where it was expected).
pub fn find_in_roots(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_owned();
    }
    let candidates: Vec<PathBuf> = project_roots().into_iter().map(|r| r.join(path)).collect();
    candidates.iter().find(|p| p.exists()).or(candidates.first()).cloned().unwrap_or_else(|| path.to_owned())
}

/// Where the ONNX Runtime library is, and which setting said so.
pub fn resolve_dylib(configured: Option<&Path>) -> Result<(PathBuf, &'static str), InferError> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Ok((PathBuf::from(p), "ORT_DYLIB_PATH"));
    }
    if let Some(p) = configured {
        return Ok((p.to_owned(), "inference.ort_dylib_path"));
    }
    let mut searched = Vec::new();
    for root in project_roots() {
        let lib = root.join(".venv/lib");
        searched.push(format!("{}/python3.*/site-packages/onnxruntime/capi/", lib.display()));
        let Ok(pythons) = std::fs::read_dir(&lib) else {
            continue;
        };
        let mut found: Vec<PathBuf> = pythons
            .flatten()
            .map(|e| e.path().join("site-packages/onnxruntime/capi"))
            .filter_map(|capi| std::fs::read_dir(capi).ok())
            .flat_map(|d| d.flatten().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so.")))
            .collect();
        found.sort();
        if let Some(p) = found.pop() {
            return Ok((p, "the project venv"));
        }
    }
    Err(InferError::RuntimeNotFound {
        searched: format!("ORT_DYLIB_PATH, inference.ort_dylib_path, {}", searched.join(", ")),
    })
}

/// Loads the ONNX Runtime library (once per process) and creates the environment.
fn environment(configured: Option<&Path>) -> Result<&'static ort::environment::Environment, InferError> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let (path, source_of_path) = resolve_dylib(configured)?;
    let load_err = |reason: String| InferError::RuntimeLoad { path: path.clone(), source_of_path, reason };
    if !path.is_file() {
        return Err(load_err("no such file".into()));
    }
    let path = path.canonicalize().map_err(|e| load_err(e.to_string()))?;
    let builder = ort::init_from(&path).map_err(|e| load_err(e.to_string()))?;
    let env =
        builder.with_name("infercast").with_telemetry(false).build().map_err(|e| InferError::Runtime(e.to_string()))?;
    tracing::info!(library = %path.display(), "ONNX Runtime loaded");
    Ok(ENVIRONMENT.get_or_init(|| env))
}

/// A loaded classification model: input `[N,3,224,224]` f32, output logits `[N,C]`.
pub struct Model {
    pub session: Session,
    pub path: PathBuf,
    pub input_name: String,
    /// Number of classes `C` the model outputs.
    pub classes: usize,
}

/// Session options for [`Model::load`].
#[derive(Clone, Debug)]
pub struct ModelOptions {
    /// Intra-op threads ONNX Runtime may use for one inference (≥ 1).
    pub threads: usize,
    /// Let idle ONNX Runtime threads spin: lower latency, more CPU burned.
    pub spin: bool,
    /// Explicit library path (`inference.ort_dylib_path`), below `ORT_DYLIB_PATH`.
    pub ort_dylib_path: Option<PathBuf>,
    /// ONNX Runtime's CPU memory arena and memory patterns (its defaults: on).
    pub memory_arena: bool,
}

impl Model {
    /// Loads the library (first call only) and the model at `path`, and checks its
    /// input is `[N,3,224,224]` f32 and its output `[N,C]`.
    ///
    /// Errors: [`InferError::RuntimeNotFound`] / [`InferError::RuntimeLoad`] for the
    /// library, [`InferError::ModelMissing`] / [`InferError::ModelInvalid`] for the model.
    pub fn load(path: &Path, options: &ModelOptions) -> Result<Model, InferError> {
        let env = environment(options.ort_dylib_path.as_deref())?;
        if !path.is_file() {
            return Err(InferError::ModelMissing { path: path.to_owned() });
        }
        let invalid = |reason: String| InferError::ModelInvalid { path: path.to_owned(), reason };
        let session = build_session(env, path, options).map_err(|e| invalid(e.to_string()))?;
        let [input] = session.inputs() else {
            return Err(invalid(format!("expected one input, found {}", session.inputs().len())));
        };
        let Some(output) = session.outputs().first() else {
            return Err(invalid("the model has no output".into()));
        };
        let input_ok = match input.dtype() {
            ValueType::Tensor { ty, shape, .. } => {
                *ty == ort::value::TensorElementType::Float32
                    && shape.len() == 4
                    && shape[1..] == [3, INPUT_SIDE as i64, INPUT_SIDE as i64]
            }
            _ => false,
        };
        if !input_ok {
            return Err(invalid(format!(
                "input `{}` is {:?}, expected [N,3,224,224] f32",
                input.name(),
                input.dtype()
            )));
        }
        let classes = match output.dtype() {
            ValueType::Tensor { shape, .. } if shape.len() == 2 && shape[1] > 0 => shape[1] as usize,
            other => {
                return Err(invalid(format!("output `{}` is {other:?}, expected [N,C] logits", output.name())));
            }
        };
        Ok(Model { input_name: input.name().to_owned(), session, path: path.to_owned(), classes })
    }

    /// Checks that `labels` names exactly the classes this model outputs.
    pub fn check_labels(&self, labels: &Labels, labels_path: &Path) -> Result<(), InferError> {
        if labels.len() != self.classes {
            return Err(InferError::LabelsCountMismatch {
                path: labels_path.to_owned(),
                model: self.path.clone(),
                labels: labels.len(),
                classes: self.classes,
            });
        }
        Ok(())
    }
}

fn build_session(env: &ort::environment::Environment, path: &Path, options: &ModelOptions) -> ort::Result<Session> {
    Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::All)?
        .with_intra_threads(options.threads.max(1))?
        .with_inter_threads(1)?
        .with_intra_op_spinning(options.spin)?
        .with_inter_op_spinning(false)?
        .with_execution_providers([ort::ep::CPU::default().with_arena_allocator(options.memory_arena).build()])?
        .with_memory_pattern(options.memory_arena)?
        .commit_from_file(path)
}
