//! Preprocessing cost: an I420 camera frame (720p, 1080p) or an RGB photo to the
//! `[3,224,224]` f32 input tensor.

use criterion::{Criterion, criterion_group, criterion_main};
use infercast::infer::{INPUT_LEN, Preprocessor};
use infercast::media::VideoFrame;

/// A synthetic but busy picture: gradients plus a checker pattern.
fn picture(w: u32, h: u32) -> Vec<u8> {
    let mut rgb = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let checker = if (x / 16 + y / 16) % 2 == 0 { 40 } else { 0 };
            rgb.extend([(x * 255 / w) as u8, (y * 255 / h) as u8, (128 + checker) as u8]);
        }
    }
    rgb
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("preprocess");
    for (w, h) in [(1280u32, 720u32), (1920, 1080)] {
        let rgb = picture(w, h);
        let frame = VideoFrame::from_rgb(w, h, &rgb);
        let mut pre = Preprocessor::new();
        let mut out = vec![0.0f32; INPUT_LEN];
        group.bench_function(format!("i420_{w}x{h}"), |b| b.iter(|| pre.i420_to_tensor(&frame.view(), &mut out)));
        group.bench_function(format!("rgb_{w}x{h}"), |b| {
            b.iter(|| pre.rgb_to_tensor(&rgb, w as usize, h as usize, w as usize * 3, &mut out))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
