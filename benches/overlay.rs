//! Overlay cost per frame: blending a cached label at 144p, 720p and 1080p, and
//! re-rasterising it every frame (label changing each iteration) at 720p.

use criterion::{Criterion, criterion_group, criterion_main};
use infercast::media::VideoFrame;
use infercast::overlay::Overlay;

/// A synthetic but busy picture: gradients plus a checker pattern.
fn frame(w: u32, h: u32) -> VideoFrame {
    let mut rgb = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let checker = if (x / 16 + y / 16) % 2 == 0 { 40 } else { 0 };
            rgb.extend([(x * 255 / w) as u8, (y * 255 / h) as u8, (128 + checker) as u8]);
        }
    }
    VideoFrame::from_rgb(w, h, &rgb)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("overlay");
    for (w, h) in [(176u32, 144u32), (1280, 720), (1920, 1080)] {
        let mut f = frame(w, h);
        let mut overlay = Overlay::new();
        group.bench_function(format!("cached_{w}x{h}"), |b| b.iter(|| overlay.draw(&mut f, "espresso", 0.87)));
    }
    let mut f = frame(1280, 720);
    let mut overlay = Overlay::new();
    let labels = ["espresso", "cup"];
    let mut i = 0usize;
    group.bench_function("uncached_1280x720", |b| {
        b.iter(|| {
            i += 1;
            overlay.draw(&mut f, labels[i % 2], 0.87);
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
