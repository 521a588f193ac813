//! H.264 RTP packetisation cost per access unit: the demo clip's keyframe and
//! P frames (real camera-like H.264), split into ≤ 1200-byte payloads.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use infercast::codec::annexb::{nal_type, nal_units};
use infercast::sfu::{DEFAULT_MAX_PAYLOAD, packetize_h264};

/// The first keyframe access unit (SPS, PPS, IDR) and the P frame after it, from
/// the demo clip; synthetic ones when the clip is missing.
fn access_units() -> (Vec<u8>, Vec<u8>) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo/bikes-640x272.h264");
    let Ok(clip) = std::fs::read(path) else {
        let mut key = vec![0, 0, 0, 1, 0x67, 0x42, 0xe0, 0x1f, 0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80, 0, 0, 0, 1, 0x65];
        key.extend((0..40_000).map(|i| (i % 251 + 1) as u8));
        let mut p = vec![0, 0, 0, 1, 0x41];
        p.extend((0..6_000).map(|i| (i % 251 + 1) as u8));
        return (key, p);
    };
    let mut key = Vec::new();
    let mut p = Vec::new();
    for nal in nal_units(&clip) {
        match nal_type(nal) {
            Some(7 | 8) if p.is_empty() => key.extend([&[0, 0, 0, 1][..], nal].concat()),
            Some(5) if p.is_empty() => key.extend([&[0, 0, 0, 1][..], nal].concat()),
            Some(1) if !key.is_empty() => {
                p.extend([&[0, 0, 0, 1][..], nal].concat());
                break;
            }
            _ => {}
        }
    }
    (key, p)
}

fn bench(c: &mut Criterion) {
    let (key, p) = access_units();
    let mut group = c.benchmark_group("packetize_h264");
    let mut out = Vec::new();
    for (name, au) in [("keyframe", &key), ("p_frame", &p)] {
        group.throughput(Throughput::Bytes(au.len() as u64));
        group.bench_function(format!("{name}_{}B", au.len()), |b| {
            b.iter(|| {
                out.clear();
                packetize_h264(black_box(au), DEFAULT_MAX_PAYLOAD, &mut out);
                black_box(out.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
