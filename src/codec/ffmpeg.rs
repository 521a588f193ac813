//! H.264 (every profile: Baseline, Main, High, CABAC, B-frames, 8×8 transform)
//! and H.265 access units → I420 [`VideoFrame`]s through FFmpeg's libavcodec
//! (the system library, dynamically linked, via `ffmpeg-next`).
//!
//! Owns keyframe gating, like the openh264 path: nothing is output before the
//! first keyframe, nor after an undecodable access unit or a corrupt picture
//! until the next keyframe. Access units go in in decode order; pictures come
//! out in presentation order with the pts (and receive/capture times) of the
//! access unit that carried them. One decoding thread per camera (cameras run
//! in parallel); no I/O.

use std::collections::VecDeque;
use std::sync::Once;
use std::time::{Instant, SystemTime};

use ff::format::Pixel;
use ff::threading;
use ffmpeg_next as ff;

use super::CodecError;
use super::decode::DecodeStats;
use crate::media::{AccessUnit, VideoCodec, VideoFrame};

/// Access units whose times are remembered while their pictures are in the
/// decoder's reorder buffer (H.264 allows 16 frames of delay).
const MAX_IN_FLIGHT: usize = 64;

/// One camera stream's libavcodec decoder. `Send`, so it lives on the camera's
/// media thread; not shared between streams.
pub struct FfmpegDecoder {
    codec: VideoCodec,
    inner: ff::decoder::Video,
    scratch: ff::frame::Video,
    /// `(pts, received_at, captured_at)` of access units sent, in decode order.
    times: VecDeque<(i64, Instant, SystemTime)>,
    waiting_for_keyframe: bool,
    /// Pictures were sent since the last flush (a drain has something to return).
    sent_since_flush: bool,
    stats: DecodeStats,
}

/// Quietens libavcodec's own logging (it writes to stderr: one line per broken
/// macroblock on a damaged stream). Our errors say what happened instead.
fn init_once() {
    static INIT: Once = Once::new();
    INIT.call_once(|| ff::log::set_level(ff::log::Level::Fatal));
}

fn open(codec: VideoCodec) -> Result<ff::decoder::Video, CodecError> {
    init_once();
    let id = match codec {
        VideoCodec::H264 => ff::codec::Id::H264,
        VideoCodec::H265 => ff::codec::Id::HEVC,
    };
    let init = |reason: String| CodecError::Init { what: "libavcodec decoder", reason };
    let found = ff::decoder::find(id).ok_or_else(|| init(format!("this FFmpeg has no {codec} decoder")))?;
    let mut ctx = ff::codec::Context::new_with_codec(found);
    // One thread per decoder: cameras decode in parallel on their own threads, and
    // frame threading would add a frame of delay per thread.
    ctx.set_threading(threading::Config { kind: threading::Type::Slice, count: 1, ..Default::default() });
    ctx.decoder().video().map_err(|e| init(e.to_string()))
}

impl FfmpegDecoder {
    /// A decoder for `codec`, waiting for its first keyframe. Errors when the
    /// system's libavcodec lacks the decoder or cannot open it.
    pub fn new(codec: VideoCodec) -> Result<FfmpegDecoder, CodecError> {
        Ok(FfmpegDecoder {
            codec,
            inner: open(codec)?,
            scratch: ff::frame::Video::empty(),
            times: VecDeque::with_capacity(MAX_IN_FLIGHT),
            waiting_for_keyframe: true,
            sent_since_flush: false,
            stats: DecodeStats::default(),
        })
    }

    /// Counters since creation.
    pub fn stats(&self) -> DecodeStats {
        self.stats
    }

    /// True until a keyframe is accepted (at the start and after any error).
    pub fn waiting_for_keyframe(&self) -> bool {
        self.waiting_for_keyframe
    }

    /// Decodes one Annex B access unit (decode order) and appends the pictures
    /// that are now ready, in presentation order, to `out` (zero, one, or more
    /// when a reorder delay ends). Each picture is tightly packed I420 with the
    /// `pts_90k`, `received_at` and `captured_at` of the access unit that carried
    /// it. With `drain`, every picture still held for reordering comes out now
    /// and the decoder starts over at the next keyframe (keyframe-only decoding).
    ///
    /// Errors for a corrupt or truncated unit, a picture the decoder flags as
    /// corrupt, or a pixel format other than 8-bit 4:2:0; nothing is output
    /// after an error until the next keyframe. Delta units are skipped (counted)
    /// while waiting for a keyframe.
    pub fn decode(&mut self, au: &AccessUnit, drain: bool, out: &mut Vec<VideoFrame>) -> Result<(), CodecError> {
        if self.waiting_for_keyframe && !au.keyframe {
            self.stats.skipped_waiting_for_keyframe += 1;
            return Ok(());
        }
        if self.waiting_for_keyframe && self.sent_since_flush {
            // Start the keyframe on a clean decoder: nothing of a broken stream survives.
            self.inner.flush();
            self.times.clear();
            self.sent_since_flush = false;
        }
        let mut packet = ff::Packet::copy(&au.data);
        packet.set_pts(Some(au.pts_90k));
        if au.keyframe {
            packet.set_flags(ff::packet::Flags::KEY);
        }
        if self.times.len() == MAX_IN_FLIGHT {
            self.times.pop_front();
        }
        self.times.push_back((au.pts_90k, au.received_at, au.captured_at));
        if let Err(e) = self.inner.send_packet(&packet) {
            return Err(self.fail(au.pts_90k, format!("libavcodec refused the access unit: {e} ({e:?})")));
        }
        self.sent_since_flush = true;
        if au.keyframe {
            // Its picture may stay in the reorder buffer for a while (B-frames):
            // the units after it are what brings it out.
            self.waiting_for_keyframe = false;
        }
        if drain {
            let _ = self.inner.send_eof(); // only fails when already draining
        }
        let result = self.receive(out);
        if drain {
            self.inner.flush();
            self.times.clear();
            self.sent_since_flush = false;
        }
        result.map_err(|reason| self.fail(au.pts_90k, reason))
    }

    /// Moves every ready picture into `out`.
    fn receive(&mut self, out: &mut Vec<VideoFrame>) -> Result<(), String> {
        loop {
            match self.inner.receive_frame(&mut self.scratch) {
                Ok(()) => {}
                Err(ff::Error::Other { errno: ff::util::error::EAGAIN }) | Err(ff::Error::Eof) => return Ok(()),
                Err(e) => return Err(format!("libavcodec: {e}")),
            }
            let pts = self.scratch.pts().unwrap_or_default();
            if self.scratch.is_corrupt() {
                return Err(format!("the picture at pts {pts} was decoded with errors (missing or damaged data)"));
            }
            let (received_at, captured_at) = self.take_times(pts);
            let mut frame = VideoFrame {
                width: 0,
                height: 0,
                y: Vec::new(),
                u: Vec::new(),
                v: Vec::new(),
                y_stride: 0,
                uv_stride: 0,
                pts_90k: pts,
                received_at,
                captured_at,
            };
            copy_picture(&self.scratch, &mut frame)?;
            self.stats.decoded += 1;
            out.push(frame);
        }
    }

    /// The times of the access unit with `pts`, forgetting it and any older one
    /// (their pictures are out, or never will be).
    fn take_times(&mut self, pts: i64) -> (Instant, SystemTime) {
        match self.times.iter().position(|&(p, _, _)| p == pts) {
            Some(i) => {
                let (_, received_at, captured_at) = self.times[i];
                self.times.remove(i);
                (received_at, captured_at)
            }
            None => (Instant::now(), SystemTime::now()),
        }
    }

    fn fail(&mut self, pts_90k: i64, reason: String) -> CodecError {
        self.stats.errors += 1;
        self.waiting_for_keyframe = true;
        tracing::debug!(codec = %self.codec, pts_90k, %reason, "decode error; waiting for the next keyframe");
        CodecError::Decode { pts_90k, reason }
    }
}

/// Copies a decoded 8-bit 4:2:0 picture into `out` as tightly packed I420
/// (JPEG-range `yuvj420p` is taken as is: the difference is small for
/// classification and drawing).
fn copy_picture(src: &ff::frame::Video, out: &mut VideoFrame) -> Result<(), String> {
    if !matches!(src.format(), Pixel::YUV420P | Pixel::YUVJ420P) {
        return Err(format!("pixel format {:?} is not supported (8-bit 4:2:0 only)", src.format()));
    }
    if src.planes() < 3 {
        return Err(format!("a 4:2:0 picture with {} planes", src.planes()));
    }
    let (w, h) = (src.width() as usize, src.height() as usize);
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    super::decode::copy_plane(&mut out.y, src.data(0), src.stride(0), w, h).map_err(|e| format!("Y plane: {e}"))?;
    super::decode::copy_plane(&mut out.u, src.data(1), src.stride(1), cw, ch).map_err(|e| format!("U plane: {e}"))?;
    super::decode::copy_plane(&mut out.v, src.data(2), src.stride(2), cw, ch).map_err(|e| format!("V plane: {e}"))?;
    (out.width, out.height) = (src.width(), src.height());
    (out.y_stride, out.uv_stride) = (w, cw);
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::codec::testutil::{encode_sequence, psnr_y};

    /// Feeds `aus` one by one; returns, per unit, the PSNR of the picture that
    /// came out for it (matched by pts) or `None`.
    fn run(dec: &mut FfmpegDecoder, aus: &[AccessUnit], sources: &[VideoFrame]) -> Vec<Option<f64>> {
        let mut out = Vec::new();
        let mut psnr = vec![None; aus.len()];
        for au in aus {
            out.clear();
            let _ = dec.decode(au, false, &mut out);
            for f in &out {
                let i = aus.iter().position(|a| a.pts_90k == f.pts_90k).expect("pts of a unit sent");
                let src = sources.iter().find(|s| s.pts_90k == f.pts_90k).expect("source");
                assert_eq!((f.received_at, f.captured_at), (aus[i].received_at, aus[i].captured_at));
                psnr[i] = Some(psnr_y(f, src));
            }
        }
        psnr
    }

    fn with_data(au: &AccessUnit, data: Vec<u8>) -> AccessUnit {
        AccessUnit::new(Bytes::from(data), au.pts_90k, au.keyframe, au.received_at, au.captured_at)
    }

    #[test]
    fn decodes_what_openh264_encoded_with_times_carried_through() {
        let (frames, aus) = encode_sequence(320, 240, 30, 30);
        let mut dec = FfmpegDecoder::new(VideoCodec::H264).unwrap();
        let psnr = run(&mut dec, &aus, &frames);
        let worst = psnr.iter().map(|p| p.expect("every frame decodes")).fold(f64::MAX, f64::min);
        assert!(worst > 30.0, "worst Y PSNR {worst:.1} dB");
        assert_eq!(dec.stats(), DecodeStats { decoded: 30, skipped_waiting_for_keyframe: 0, errors: 0 });
    }

    #[test]
    fn keyframes_alone_come_out_at_once() {
        let (frames, aus) = encode_sequence(320, 240, 30, 10);
        let mut dec = FfmpegDecoder::new(VideoCodec::H264).unwrap();
        let mut out = Vec::new();
        for au in aus.iter().filter(|a| a.keyframe) {
            out.clear();
            dec.decode(au, true, &mut out).unwrap();
            assert_eq!(out.len(), 1, "the keyframe at pts {} comes out with its unit", au.pts_90k);
            let src = frames.iter().find(|f| f.pts_90k == au.pts_90k).unwrap();
            assert!(psnr_y(&out[0], src) > 30.0);
        }
        assert_eq!(dec.stats().decoded, 3);
    }

    #[test]
    fn skips_delta_frames_until_the_first_keyframe() {
        let (frames, aus) = encode_sequence(320, 240, 25, 10);
        let mut dec = FfmpegDecoder::new(VideoCodec::H264).unwrap();
        let psnr = run(&mut dec, &aus[3..], &frames[3..]);
        assert!(psnr[..7].iter().all(Option::is_none), "{psnr:?}");
        assert!(psnr[7..].iter().all(|p| p.is_some_and(|db| db > 30.0)), "{psnr:?}");
        assert_eq!(dec.stats().skipped_waiting_for_keyframe, 7);
    }

    #[test]
    fn truncated_and_garbage_units_never_show_a_smeared_picture() {
        let (frames, aus) = encode_sequence(320, 240, 30, 10);
        let mut garbage = crate::codec::testutil::garbage_units();
        garbage.push(aus[4].data[..aus[4].data.len() / 2].to_vec()); // truncated
        for (i, g) in garbage.iter().enumerate() {
            let mut dec = FfmpegDecoder::new(VideoCodec::H264).unwrap();
            run(&mut dec, &aus[..4], &frames[..4]);
            let mut out = Vec::new();
            let _ = dec.decode(&with_data(&aus[4], g.clone()), false, &mut out); // Err or Ok, never a panic
            let psnr = run(&mut dec, &aus[5..], &frames[5..]);
            assert!(psnr.iter().flatten().all(|&db| db > 30.0), "garbage #{i}: smeared output {psnr:?}");
            assert!(psnr[5..].iter().all(Option::is_some), "garbage #{i}: no recovery at the keyframe {psnr:?}");
        }
    }

    #[test]
    fn decoder_moves_to_other_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<FfmpegDecoder>();
    }
}
