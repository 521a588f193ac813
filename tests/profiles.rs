//! What cameras really send, through the real RTSP server: H.264 Main (CABAC),
//! High (8×8 transform), High with B-frames and H.265, each decoded by
//! libavcodec at full rate, labelled, snapshotted, and re-encoded as an
//! annotated H.264 track that a WHEP viewer receives and decodes.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::depay::Received;
use common::netns;
use common::rtsp::RtspServer;
use common::service::Infercast;
use common::whep_client::{self, Offer, Viewer};
use infercast::codec::ffmpeg::FfmpegDecoder;
use infercast::media::VideoCodec;

/// `(camera, clip)`: the camera-like clips of scripts/make-clips, 1280×720, 25 fps, 1 s GOP.
const CAMERAS: [(&str, &str); 4] = [
    ("main", "assets/demo/bikes-1280x720-main.h264"),
    ("high", "assets/demo/bikes-1280x720-high.h264"),
    ("bframes", "assets/demo/bikes-1280x720-high-bframes.mkv"),
    ("hevc", "assets/demo/bikes-1280x720.h265"),
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn dropped(app: &Infercast, camera: &str) -> f64 {
    ["corrupt", "waiting_for_keyframe", "decode_queue_full"]
        .iter()
        .map(|r| app.metric(&format!("infercast_frames_dropped_total{{camera=\"{camera}\",reason=\"{r}\"}}")))
        .sum()
}

#[test]
fn main_high_bframes_and_h265_cameras_stream_at_full_rate_with_labels_snapshots_and_annotated_video() {
    if !netns::isolated(
        "main_high_bframes_and_h265_cameras_stream_at_full_rate_with_labels_snapshots_and_annotated_video",
    ) {
        return;
    }
    let mounts: Vec<(String, &str)> = CAMERAS.iter().map(|(n, clip)| (format!("/{n}"), *clip)).collect();
    let mounts: Vec<(&str, &str)> = mounts.iter().map(|(p, c)| (p.as_str(), *c)).collect();
    let server = RtspServer::start(&mounts, None);
    let args: Vec<String> = CAMERAS.iter().map(|(n, _)| format!("{n}={}", server.url(&format!("/{n}")))).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let app = Infercast::start(&args);
    for (name, _) in CAMERAS {
        app.wait_for(&format!("/api/cameras/{name}"), Duration::from_secs(20), |c| {
            c["state"] == "streaming" && c["fps"].as_f64().is_some()
        });
    }
    // Full rate with nothing dropped, measured over 4 s after start-up.
    std::thread::sleep(Duration::from_secs(2));
    let before: Vec<(f64, f64)> = CAMERAS
        .iter()
        .map(|(n, _)| (app.metric(&format!("infercast_frames_decoded_total{{camera=\"{n}\"}}")), dropped(&app, n)))
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    for ((name, _), (decoded0, dropped0)) in CAMERAS.iter().zip(before) {
        let decoded = app.metric(&format!("infercast_frames_decoded_total{{camera=\"{name}\"}}")) - decoded0;
        // 100 ± 12: the decoders of four 720p cameras on two cores catch up in
        // bursts, so a 4 s window can hold a frame or two more or less.
        assert!((88.0..=112.0).contains(&decoded), "{name}: {decoded} frames decoded in 4 s at 25 fps");
        assert_eq!(dropped(&app, name) - dropped0, 0.0, "{name}: frames dropped; log:\n{}", app.log());
        let cam = app.camera(name);
        assert_eq!(cam["state"], "streaming", "{name}: {cam:#}");
        assert_eq!((cam["width"].as_u64(), cam["height"].as_u64()), (Some(1280), Some(720)), "{name}");
        assert_eq!(cam["bframes"], *name == "bframes", "{name}: {cam:#}");
        assert_eq!(cam["codec"], if *name == "hevc" { "H.265" } else { "H.264" });
        assert_eq!(cam["decoder"], "ffmpeg");
        assert_eq!(cam["analysis"], "every_frame", "classify_fps 5 > 1 keyframe/s: every frame");
        let labels = app.get_json(&format!("/api/labels/{name}?limit=100"));
        let labels = labels.as_array().unwrap();
        assert!(labels.len() >= 10, "{name}: {} labels", labels.len());
        // pts in presentation order, so label times never go backwards (B-frames included).
        let pts: Vec<i64> = labels.iter().map(|l| l["frame_pts"].as_i64().unwrap()).collect();
        assert!(pts.windows(2).all(|w| w[0] < w[1]), "{name}: label pts out of order {pts:?}");
        let snap = app.get(&format!("/api/cameras/{name}/snapshot.jpg"));
        assert_eq!(snap.status, 200, "{name} snapshot");
        assert_eq!(image::load_from_memory(&snap.body).unwrap().to_luma8().dimensions(), (1280, 720));
    }

    // H.265's raw track cannot go to WebRTC players: a clear 406.
    let rt = runtime();
    let probe = rt.block_on(Viewer::new(Offer::H264));
    let r = whep_client::post(&app.base, "/whep/hevc/raw", "application/sdp", &probe.offer_sdp);
    assert_eq!(r.status, 406, "{}", r.body);
    assert!(r.body.contains("H.265"), "{}", r.body);
    rt.block_on(probe.close());

    // Every camera's annotated track: H.264 that a viewer receives and decodes, starting at an IDR.
    for (name, _) in CAMERAS {
        let received = Received::default();
        let viewer = rt.block_on(Viewer::with_sink(Offer::H264, received.sink()));
        let path = format!("/whep/{name}/annotated");
        let r = whep_client::post(&app.base, &path, "application/sdp", &viewer.offer_sdp);
        assert_eq!(r.status, 201, "POST {path}: {}", r.body);
        rt.block_on(viewer.apply_answer(&r.body));
        assert!(rt.block_on(viewer.connected(Duration::from_secs(10))), "{name}: viewer connects");
        let (aus, lost) = received.wait_for_units(50, Duration::from_secs(12));
        assert!(aus.len() >= 50, "{name}: {} access units ({lost} lost to missing packets)", aus.len());
        assert!(aus[0].keyframe, "{name}: the annotated track starts at an IDR");
        let mut decoder = FfmpegDecoder::new(VideoCodec::H264).unwrap();
        let mut pictures = Vec::new();
        for au in &aus {
            decoder.decode(au, false, &mut pictures).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(pictures.len() + 2 >= aus.len(), "{name}: {} pictures from {} access units", pictures.len(), aus.len());
        assert!(pictures.iter().all(|p| (p.width, p.height) == (1280, 720)));
        assert_eq!(decoder.stats().errors, 0);
        let r = whep_client::delete(&app.base, r.location.as_deref().unwrap());
        assert!(r.status == 200 || r.status == 204);
        rt.block_on(viewer.close());
    }
}

#[test]
fn openh264_decodes_baseline_and_shows_degraded_on_a_stream_it_cannot_decode() {
    if !netns::isolated("openh264_decodes_baseline_and_shows_degraded_on_a_stream_it_cannot_decode") {
        return;
    }
    let server = RtspServer::start(
        &[("/base", "assets/demo/bikes-640x272.h264"), ("/bframes", "assets/demo/bikes-1280x720-high-bframes.mkv")],
        None,
    );
    let config = common::scratch_dir("openh264_profiles").join("infercast.toml");
    let toml = format!(
        "[[camera]]\nname = \"base\"\nurl = \"{}\"\ndecoder = \"openh264\"\n\n\
         [[camera]]\nname = \"bframes\"\nurl = \"{}\"\ndecoder = \"openh264\"\n",
        server.url("/base"),
        server.url("/bframes")
    );
    std::fs::write(&config, toml).unwrap();
    let app = Infercast::start(&["--config", config.to_str().unwrap()]);
    let base = app.wait_for("/api/cameras/base", Duration::from_secs(20), |c| {
        c["state"] == "streaming" && c["fps"].as_f64().is_some_and(|f| (f - 25.0).abs() <= 2.5)
    });
    assert_eq!(base["decoder"], "openh264");
    app.wait_for("/api/labels/base", Duration::from_secs(10), |v| v.as_array().is_some_and(|a| !a.is_empty()));
    // openh264 cannot take B-frames: most pictures are lost, and the camera says so.
    let cam = app.wait_for("/api/cameras/bframes", Duration::from_secs(20), |c| c["state"] == "degraded");
    let reason = cam["last_error"].as_str().unwrap();
    assert!(reason.starts_with("decoding ") && reason.contains("frames/s"), "{reason}");
    assert!(app.metric("infercast_camera_degraded_total{camera=\"bframes\"}") >= 1.0);
    assert_eq!(app.get_json("/readyz")["cameras_degraded"], 1);
    assert_eq!(app.camera("base")["state"], "streaming", "the other camera is untouched");
}
