//! The real model on real photos (scikit-image's bundled data), through both
//! preprocessing paths: RGB (still photos) and I420 (what the camera decoder gives).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use infercast::classify::load_photo;
use infercast::config::{InferenceConfig, ModelVariant};
use infercast::infer::{Classification, INPUT_LEN, InferenceWorker, Preprocessor};
use infercast::media::VideoFrame;

const CATS: std::ops::RangeInclusive<u32> = 281..=285; // tabby, tiger cat, Persian, Siamese, Egyptian cat
const ESPRESSO: u32 = 967;
const MOPED: u32 = 665;
const MOTOR_SCOOTER: u32 = 670;

fn worker(model: ModelVariant) -> InferenceWorker {
    InferenceWorker::start(&InferenceConfig { model, ..InferenceConfig::default() })
        .expect("classifier starts (run scripts/setup)")
}

/// Classifies a photo through the RGB path and through the I420 path.
fn both_paths(worker: &InferenceWorker, name: &str) -> (Classification, Classification) {
    let photo = load_photo(&common::skimage_photo(name)).expect("photo loads");
    let mut pre = Preprocessor::new();
    let mut rgb = vec![0.0; INPUT_LEN];
    pre.rgb_to_tensor(&photo.rgb, photo.width as usize, photo.height as usize, photo.width as usize * 3, &mut rgb);
    let frame = VideoFrame::from_rgb(photo.width, photo.height, &photo.rgb);
    let mut i420 = vec![0.0; INPUT_LEN];
    pre.i420_to_tensor(&frame.view(), &mut i420);
    (worker.classify_blocking(rgb).expect("RGB classifies"), worker.classify_blocking(i420).expect("I420 classifies"))
}

fn check_photos(model: ModelVariant) {
    let w = worker(model);
    for path_result in {
        let (a, b) = both_paths(&w, "coffee.png");
        [a, b]
    } {
        let top = &path_result.top[0];
        assert_eq!(top.class_id, ESPRESSO, "{model:?} coffee: {:?}", path_result.top);
        assert!(top.score >= 0.5, "{model:?} coffee espresso score {}", top.score);
        assert_eq!(&*top.label, "espresso");
    }
    let (a, b) = both_paths(&w, "chelsea.png");
    for c in [a, b] {
        assert!(CATS.contains(&c.top[0].class_id), "{model:?} chelsea: {:?}", c.top);
    }
    let (a, b) = both_paths(&w, "motorcycle_left.png");
    for c in [a, b] {
        let top2: Vec<u32> = c.top[..2].iter().map(|s| s.class_id).collect();
        assert!(top2.contains(&MOPED) || top2.contains(&MOTOR_SCOOTER), "{model:?} motorcycle: {:?}", c.top);
    }
}

#[test]
fn fp32_classifies_real_photos() {
    check_photos(ModelVariant::Fp32);
}

#[test]
fn int8_classifies_real_photos() {
    check_photos(ModelVariant::Int8);
}

/// The I420 path differs from the RGB path only by what a camera's encoding
/// does to a picture: 4:2:0 chroma subsampling and 8-bit YUV rounding. On these
/// photos that moves pixels by a few levels, which moves fp32 logits (spanning
/// about ±15) by little: measured max |Δlogit| 0.08 coffee, 0.10 chelsea, 0.12
/// motorcycle_left, 0.12 astronaut, 0.26 rocket. The bound is 1.0 — about 4× the
/// worst seen, yet far below what changes a confident top-1 — plus the same top-1.
#[test]
fn i420_and_rgb_paths_agree() {
    let w = worker(ModelVariant::Fp32);
    for name in ["coffee.png", "chelsea.png", "motorcycle_left.png", "astronaut.png", "rocket.jpg"] {
        let (rgb, i420) = both_paths(&w, name);
        assert_eq!(rgb.top[0].class_id, i420.top[0].class_id, "{name}: {:?} vs {:?}", rgb.top, i420.top);
        let max_diff = rgb.logits.iter().zip(&i420.logits).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        eprintln!("{name}: max |Δlogit| = {max_diff:.3}");
        assert!(max_diff <= 1.0, "{name}: logits differ by {max_diff}");
    }
}
