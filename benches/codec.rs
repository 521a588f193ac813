//! H.264 cost per frame at 720p and 1080p: decoding a camera-like stream into
//! I420 (with and without reusing the output frame) and encoding the annotated
//! track (2 Mbit/s at 720p, 4 Mbit/s at 1080p, 25 fps, 2 s GOP).
//!
//! Input: 50 synthetic moving frames, encoded once up front; each iteration
//! decodes (or encodes) the next frame of the loop, so P-frames and the GOP's
//! IDR are averaged as in a live stream. The synthetic picture moves as a whole
//! (hard for the encoder); the first 50 frames of the demo clip
//! `assets/demo/bikes-1280x720.h264` (real camera-like content, x264 constrained
//! baseline, 1 s GOP) are benched too when the file is present.
//!
//! Two groups: `codec` measures wall time; `codec_cpu` measures the bench
//! thread's CPU time (from `/proc/thread-self/schedstat`), which stays honest on
//! a shared 2-core box and is the "share of a core" the pipeline budget needs.

use std::time::{Instant, SystemTime};

use bytes::Bytes;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use infercast::codec::annexb::{self, START_CODE, nal_type};
use infercast::codec::decode::Decoder;
use infercast::codec::encode::{Encoder, EncoderConfig, Openh264Tuning};
use infercast::codec::ffmpeg::FfmpegDecoder;
use infercast::codec::x264::X264Encoder;
use infercast::media::{AccessUnit, VideoCodec, VideoFrame};

const FRAMES: u32 = 50;
const FPS: f32 = 25.0;

/// Frame `i`: gradients, a sliding checker pattern and a bright square that
/// crosses the picture, so motion estimation has real work.
fn frame(w: u32, h: u32, i: u32) -> VideoFrame {
    let (bx, by) = (i * w / FRAMES, h / 3 + i * h / (3 * FRAMES));
    let mut rgb = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let xs = x + 4 * i;
            let checker = if (xs / 24 + y / 24).is_multiple_of(2) { 50 } else { 0 };
            let square = x.abs_diff(bx) < w / 12 && y.abs_diff(by) < h / 8;
            if square {
                rgb.extend([250, 240, 40]);
            } else {
                rgb.extend([(x * 255 / w) as u8, ((y + 2 * i) * 200 / h).min(255) as u8, (90 + checker) as u8]);
            }
        }
    }
    let mut f = VideoFrame::from_rgb(w, h, &rgb);
    f.pts_90k = i64::from(i) * 3600; // 25 fps in 90 kHz ticks
    f
}

/// The first `FRAMES` access units of an Annex B file with one slice per
/// picture: each slice NAL unit closes a unit with the NAL units before it.
fn clip_access_units(data: &[u8]) -> Vec<AccessUnit> {
    let mut aus = Vec::new();
    let mut pending = Vec::new();
    for nal in annexb::nal_units(data) {
        pending.extend_from_slice(&START_CODE);
        pending.extend_from_slice(nal);
        if matches!(annexb::nal_type(nal), Some(nal_type::NON_IDR_SLICE | nal_type::IDR_SLICE)) {
            let keyframe = annexb::nal_type(nal) == Some(nal_type::IDR_SLICE);
            let data = Bytes::from(std::mem::take(&mut pending));
            let pts_90k = aus.len() as i64 * 3600;
            aus.push(AccessUnit::new(data, pts_90k, keyframe, Instant::now(), SystemTime::now()));
            if aus.len() == FRAMES as usize {
                break;
            }
        }
    }
    aus
}

/// CPU time of the calling thread in nanoseconds; openh264 runs on it (one
/// encoder thread, no decoder threads), so this is the codec's CPU cost.
struct ThreadCpuTime {
    wall: WallTime,
}

fn thread_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").expect("Linux /proc/thread-self/schedstat");
    stat.split_whitespace().next().and_then(|ns| ns.parse().ok()).expect("schedstat starts with on-CPU ns")
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, ns: &u64) -> f64 {
        *ns as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        self.wall.formatter() // nanoseconds, shown like durations
    }
}

fn bench_wall(c: &mut Criterion) {
    bench(c, "codec");
}

fn bench_cpu(c: &mut Criterion<ThreadCpuTime>) {
    bench(c, "codec_cpu");
}

fn bench<M: Measurement>(c: &mut Criterion<M>, group_name: &str) {
    let mut group = c.benchmark_group(group_name);
    for (w, h, bitrate_bps) in [(1280u32, 720u32, 2_000_000u32), (1920, 1080, 4_000_000)] {
        let frames: Vec<VideoFrame> = (0..FRAMES).map(|i| frame(w, h, i)).collect();
        let aus = encode_all(&frames, bitrate_bps);
        bench_decode(&mut group, &format!("synthetic_{w}x{h}"), &aus);
        bench_encode(&mut group, &format!("synthetic_{w}x{h}_{}kbps", bitrate_bps / 1000), &frames, bitrate_bps);
    }
    let clip = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo/bikes-1280x720.h264");
    match std::fs::read(clip) {
        Ok(data) => {
            let aus = clip_access_units(&data);
            let mut dec = Decoder::new().expect("decoder");
            let frames: Vec<VideoFrame> =
                aus.iter().filter_map(|au| dec.decode(au).expect("the demo clip decodes")).collect();
            bench_decode(&mut group, "bikes_1280x720", &aus);
            bench_encode(&mut group, "bikes_1280x720_2000kbps", &frames, 2_000_000);
            bench_x264(&mut group, "bikes_1280x720_2000kbps", &frames, 2_000_000);
            bench_openh264_tuning(&mut group, "bikes_1280x720_2000kbps", &frames, 2_000_000);
            let half: Vec<VideoFrame> = frames.iter().map(|f| f.downscaled(640, 360)).collect();
            bench_encode(&mut group, "bikes_640x360_1000kbps", &half, 1_000_000);
            bench_x264(&mut group, "bikes_640x360_1000kbps", &half, 1_000_000);
            group.bench_function("downscale_half_1280x720", |b| b.iter(|| frames[7].downscaled(640, 360)));
        }
        Err(e) => eprintln!("{clip}: {e}; real-content benches skipped"),
    }
    // Camera-like streams (scripts/make-clips): openh264 against libavcodec.
    for name in ["bikes-1280x720-main", "bikes-1280x720-high", "bikes-1920x1080-main"] {
        let clip = format!("{}/assets/demo/{name}.h264", env!("CARGO_MANIFEST_DIR"));
        match std::fs::read(&clip) {
            Ok(data) => {
                let aus = clip_access_units(&data);
                let tag = name.trim_start_matches("bikes-").replace('-', "_");
                bench_ffmpeg_decode(&mut group, &tag, &aus);
                if name.ends_with("main") {
                    bench_decode(&mut group, &tag, &aus);
                }
            }
            Err(e) => eprintln!("{clip}: {e}; run scripts/make-clips"),
        }
    }
    group.finish();
}

/// libavcodec decoding the loop of `aus` (one thread), pictures out as new frames.
fn bench_ffmpeg_decode<M: Measurement>(group: &mut BenchmarkGroup<'_, M>, name: &str, aus: &[AccessUnit]) {
    assert!(aus[0].keyframe, "the loop must start at an IDR");
    let mut dec = FfmpegDecoder::new(VideoCodec::H264).expect("libavcodec decoder");
    let mut out = Vec::new();
    let mut next = 0;
    group.bench_function(format!("ffmpeg_decode_{name}"), |b| {
        b.iter(|| {
            let au = &aus[next % aus.len()];
            next += 1;
            out.clear();
            dec.decode(au, false, &mut out).expect("decode");
        })
    });
    // Keyframe-only monitoring: one IDR decoded on its own.
    let key = aus.iter().find(|a| a.keyframe).expect("an IDR");
    group.bench_function(format!("ffmpeg_decode_idr_alone_{name}"), |b| {
        b.iter(|| {
            out.clear();
            dec.decode(key, true, &mut out).expect("decode");
        })
    });
}

/// openh264's knobs against the annotated track's default (low complexity,
/// adaptive quantisation and background detection on).
fn bench_openh264_tuning<M: Measurement>(
    group: &mut BenchmarkGroup<'_, M>,
    name: &str,
    frames: &[VideoFrame],
    bitrate_bps: u32,
) {
    use infercast::codec::encode::Openh264Complexity as Complexity;
    let base = Openh264Tuning::default();
    let variants = [
        ("medium", Openh264Tuning { complexity: Complexity::Medium, ..base }),
        ("low_no_aq", Openh264Tuning { adaptive_quantization: false, ..base }),
        ("low_no_aq_no_bgd", Openh264Tuning { adaptive_quantization: false, background_detection: false, ..base }),
    ];
    for (tag, tuning) in variants {
        let mut enc = Encoder::with_tuning(config(frames, bitrate_bps), tuning).expect("encoder");
        let mut next = 0;
        group.bench_function(format!("openh264_{tag}_encode_{name}"), |b| {
            b.iter(|| {
                let f = &frames[next % frames.len()];
                next += 1;
                enc.encode(f, false).expect("encode")
            })
        });
    }
}

/// libx264 (`ultrafast`, `zerolatency`) encoding the loop of `frames` with a 2 s GOP.
fn bench_x264<M: Measurement>(group: &mut BenchmarkGroup<'_, M>, name: &str, frames: &[VideoFrame], bitrate_bps: u32) {
    for preset in ["ultrafast", "superfast"] {
        let mut enc = X264Encoder::new(config(frames, bitrate_bps), preset).expect("libx264");
        let mut next = 0;
        group.bench_function(format!("x264_{preset}_encode_{name}"), |b| {
            b.iter(|| {
                let f = &frames[next % frames.len()];
                next += 1;
                enc.encode(f, false).expect("encode")
            })
        });
    }
}

fn config(frames: &[VideoFrame], bitrate_bps: u32) -> EncoderConfig {
    let (width, height) = (frames[0].width, frames[0].height);
    EncoderConfig { width, height, bitrate_bps, max_fps: FPS, gop_frames: (2.0 * FPS) as u32 }
}

fn encode_all(frames: &[VideoFrame], bitrate_bps: u32) -> Vec<AccessUnit> {
    let mut enc = Encoder::new(config(frames, bitrate_bps)).expect("encoder");
    frames.iter().map(|f| enc.encode(f, false).expect("encode")).collect()
}

/// Decoding the loop of `aus` (starting at an IDR, so wrapping around is a
/// clean restart), into a reused frame and into a new frame each time.
fn bench_decode<M: Measurement>(group: &mut BenchmarkGroup<'_, M>, name: &str, aus: &[AccessUnit]) {
    assert!(aus[0].keyframe, "the loop must start at an IDR");
    let mut dec = Decoder::new().expect("decoder");
    let mut out = dec.decode(&aus[0]).expect("decode").expect("a picture");
    let mut next = 1;
    group.bench_function(format!("decode_into_{name}"), |b| {
        b.iter(|| {
            let au = &aus[next % aus.len()];
            next += 1;
            dec.decode_into(au, &mut out).expect("decode")
        })
    });
    let mut dec = Decoder::new().expect("decoder");
    let mut next = 0;
    group.bench_function(format!("decode_alloc_{name}"), |b| {
        b.iter(|| {
            let au = &aus[next % aus.len()];
            next += 1;
            dec.decode(au).expect("decode")
        })
    });
}

/// Encoding the loop of `frames` with a 2 s GOP.
fn bench_encode<M: Measurement>(
    group: &mut BenchmarkGroup<'_, M>,
    name: &str,
    frames: &[VideoFrame],
    bitrate_bps: u32,
) {
    let mut enc = Encoder::new(config(frames, bitrate_bps)).expect("encoder");
    let mut next = 0;
    group.bench_function(format!("encode_{name}"), |b| {
        b.iter(|| {
            let f = &frames[next % frames.len()];
            next += 1;
            enc.encode(f, false).expect("encode")
        })
    });
}

criterion_group!(wall, bench_wall);
criterion_group! {
    name = cpu;
    config = Criterion::default().with_measurement(ThreadCpuTime { wall: WallTime });
    targets = bench_cpu
}
criterion_main!(wall, cpu);
