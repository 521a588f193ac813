//! The inference worker: one thread owns the ONNX Runtime session
//! (`Session::run` needs `&mut`) and serves classification requests from any
//! number of callers (cameras, the CLI), batching what is queued.

use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::Instant;

use ndarray::ArrayView4;
use ort::value::TensorRef;
use tokio::sync::oneshot;

use super::runtime::ModelOptions;
use super::{ClassScore, INPUT_LEN, INPUT_SIDE, InferError, Labels, Model, top_k};
use crate::config::InferenceConfig;

/// Classes reported per image.
pub const TOP_K: usize = 5;

/// The result for one image.
#[derive(Clone, Debug)]
pub struct Classification {
    /// The [`TOP_K`] most probable classes, best first.
    pub top: Vec<ClassScore>,
    /// Raw logits `[C]` as the model output them (before softmax).
    pub logits: Vec<f32>,
    /// Wall time of the `Session::run` that produced this result, in ms.
    pub infer_ms: f64,
    /// How many images that run classified together.
    pub batch_size: usize,
}

/// Called on the worker thread with the result of one request.
pub type Reply = Box<dyn FnOnce(Result<Classification, InferError>) + Send>;

/// A request [`InferenceWorker::offer`] could not queue.
pub enum Offer {
    /// The queue is full: the `[3,224,224]` tensor and its reply, to offer again.
    Full(Vec<f32>, Reply),
    /// The worker has stopped.
    Stopped,
}

struct Job {
    /// `[3,224,224]` f32 input, see [`super::Preprocessor`].
    tensor: Vec<f32>,
    reply: Reply,
}

fn oneshot_reply() -> (Reply, oneshot::Receiver<Result<Classification, InferError>>) {
    let (tx, rx) = oneshot::channel();
    (Box::new(move |r| drop(tx.send(r))), rx)
}

/// Handle to the inference worker thread. Cloning is cheap; the thread ends when
/// the last handle is dropped and the queue is drained.
#[derive(Clone)]
pub struct InferenceWorker {
    tx: SyncSender<Job>,
    labels: Labels,
}

impl InferenceWorker {
    /// Loads the ONNX Runtime library, the model and its labels as `config` says,
    /// checks they fit together, and starts the worker.
    ///
    /// Errors: any of the loading errors of [`InferError`], each naming the file.
    pub fn start(config: &InferenceConfig) -> Result<Self, InferError> {
        let options = ModelOptions {
            threads: config.threads,
            spin: config.spin,
            ort_dylib_path: config.ort_dylib_path.clone(),
            memory_arena: config.memory_arena,
        };
        let model = Model::load(&config.resolved_model_path(), &options)?;
        let labels_path = config.resolved_labels_path();
        let labels = Labels::load(&labels_path)?;
        model.check_labels(&labels, &labels_path)?;
        tracing::info!(model = %model.path.display(), classes = model.classes, threads = config.threads, "classifier ready");
        Self::spawn(model, labels, config.queue_len, config.max_batch)
    }

    /// Starts the worker thread owning `model`. At most `queue_len` requests wait;
    /// up to `max_batch` of them run as one `[N,3,224,224]` batch.
    ///
    /// Errors if the model's class count does not match `labels` (checked by the
    /// caller through [`Model::check_labels`]) or the thread cannot be spawned.
    pub fn spawn(model: Model, labels: Labels, queue_len: usize, max_batch: usize) -> Result<Self, InferError> {
        let (tx, rx) = sync_channel(queue_len.max(1));
        let worker_labels = labels.clone();
        std::thread::Builder::new()
            .name("infer".into())
            .spawn(move || {
                crate::sched::batch_current_thread();
                run(model, worker_labels, rx, max_batch.max(1))
            })
            .map_err(|e| InferError::Runtime(format!("cannot start the inference thread: {e}")))?;
        Ok(InferenceWorker { tx, labels })
    }

    /// The class names this worker reports.
    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// Queues `tensor` (`[3,224,224]` f32) without waiting; errors with
    /// [`InferError::Busy`] when the queue is full, so a camera that falls behind
    /// drops the request instead of stalling.
    pub fn try_submit(
        &self,
        tensor: Vec<f32>,
    ) -> Result<oneshot::Receiver<Result<Classification, InferError>>, InferError> {
        let (reply, rx) = oneshot_reply();
        self.try_submit_with(tensor, reply).map(|()| rx)
    }

    /// Like [`Self::try_submit`], but `reply` runs on the worker thread as soon as
    /// the result exists (keep it short: it delays the next inference).
    pub fn try_submit_with(&self, tensor: Vec<f32>, reply: Reply) -> Result<(), InferError> {
        assert_eq!(tensor.len(), INPUT_LEN, "tensor must be [3,224,224]");
        match self.tx.try_send(Job { tensor, reply }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(InferError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(InferError::Stopped),
        }
    }

    /// Like [`Self::try_submit_with`], but a full queue hands the request back
    /// ([`Offer::Full`]) so the caller can offer it again a little later instead
    /// of losing it (keyframe-only cameras classify once per GOP, and cameras
    /// with aligned GOPs all ask at the same moment).
    pub fn offer(&self, tensor: Vec<f32>, reply: Reply) -> Result<(), Offer> {
        assert_eq!(tensor.len(), INPUT_LEN, "tensor must be [3,224,224]");
        match self.tx.try_send(Job { tensor, reply }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job)) => Err(Offer::Full(job.tensor, job.reply)),
            Err(TrySendError::Disconnected(_)) => Err(Offer::Stopped),
        }
    }

    /// Classifies `tensor` (`[3,224,224]` f32), waiting for queue space and the
    /// result. For synchronous callers only (not inside an async task).
    pub fn classify_blocking(&self, tensor: Vec<f32>) -> Result<Classification, InferError> {
        assert_eq!(tensor.len(), INPUT_LEN, "tensor must be [3,224,224]");
        let (reply, rx) = oneshot_reply();
        self.tx.send(Job { tensor, reply }).map_err(|_| InferError::Stopped)?;
        rx.blocking_recv().map_err(|_| InferError::Stopped)?
    }
}

fn run(mut model: Model, labels: Labels, rx: Receiver<Job>, max_batch: usize) {
    let mut input = Vec::with_capacity(max_batch * INPUT_LEN);
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        input.clear();
        for job in &jobs {
            input.extend_from_slice(&job.tensor);
        }
        let started = Instant::now();
        let result = infer(&mut model, &input, jobs.len());
        let infer_ms = started.elapsed().as_secs_f64() * 1e3;
        match result {
            Ok(logits) => {
                for (job, row) in jobs.into_iter().zip(logits.chunks_exact(model.classes)) {
                    let result = Classification {
                        top: top_k(row, TOP_K, &labels),
                        logits: row.to_vec(),
                        infer_ms,
                        batch_size: logits.len() / model.classes,
                    };
                    (job.reply)(Ok(result));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "inference failed");
                for job in jobs {
                    (job.reply)(Err(InferError::Run(e.clone())));
                }
            }
        }
    }
    tracing::debug!("inference worker stopped");
}

/// Runs one batch; returns `[n × C]` logits, row-major.
fn infer(model: &mut Model, input: &[f32], n: usize) -> Result<Vec<f32>, String> {
    let view = ArrayView4::from_shape((n, 3, INPUT_SIDE, INPUT_SIDE), input).map_err(|e| e.to_string())?;
    let tensor = TensorRef::from_array_view(view).map_err(|e| e.to_string())?;
    let name = model.input_name.clone();
    let outputs = model.session.run(ort::inputs![name => tensor]).map_err(|e| e.to_string())?;
    let (shape, data) = outputs[0].try_extract_tensor::<f32>().map_err(|e| e.to_string())?;
    if shape.len() != 2 || shape[0] as usize != n || shape[1] as usize != model.classes {
        return Err(format!("unexpected output shape {shape:?}"));
    }
    Ok(data.to_vec())
}
