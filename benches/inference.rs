//! Inference cost of EfficientNet-Lite0 at batch 1: fp32 and int8, 1 and 2
//! intra-op threads (the model and ONNX Runtime from `scripts/setup`).

use criterion::{Criterion, criterion_group, criterion_main};
use infercast::config::{InferenceConfig, ModelVariant};
use infercast::infer::{INPUT_LEN, InferenceWorker};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("inference");
    for model in [ModelVariant::Fp32, ModelVariant::Int8] {
        for threads in [1usize, 2] {
            let config = InferenceConfig { model, threads, ..InferenceConfig::default() };
            let worker = InferenceWorker::start(&config).expect("classifier starts (run scripts/setup)");
            let input: Vec<f32> = (0..INPUT_LEN).map(|i| ((i % 255) as f32 - 127.0) / 128.0).collect();
            group.bench_function(format!("{}_batch1_threads{threads}", model.as_str()), |b| {
                b.iter(|| worker.classify_blocking(input.clone()).expect("inference runs"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
