//! Video decode (FFmpeg's libavcodec for H.264 of every profile and H.265, or
//! openh264 for Baseline H.264) and H.264 encode (openh264), plus Annex B / AVCC
//! helpers.
//!
//! [`VideoDecoder`] turns camera access units into I420 [`VideoFrame`]s in
//! presentation order and never shows a picture built on a lost reference
//! ([`ffmpeg::FfmpegDecoder`] or [`decode::Decoder`]); [`encode::Encoder`] turns
//! annotated frames into a browser-friendly constrained-baseline stream;
//! [`annexb`] splits and converts byte streams for ingest and packetisers.
//! This module does no I/O, owns no threads and knows nothing about cameras or
//! viewers: callers pass access units and frames in, and get them back.
//!
//! [`VideoFrame`]: crate::media::VideoFrame

pub mod annexb;
pub mod decode;
pub mod encode;
pub mod ffmpeg;
pub mod x264;

use serde::{Deserialize, Serialize};

use self::decode::DecodeStats;
use crate::media::{AccessUnit, VideoCodec, VideoFrame};

/// Which library decodes a camera's stream (`decoder` in the camera config).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DecoderKind {
    /// FFmpeg's libavcodec (the system library): H.264 of every profile
    /// (Baseline, Main, High, CABAC, B-frames) and H.265. The default.
    #[default]
    Ffmpeg,
    /// openh264 (built in, no system library): Baseline H.264 without B-frames;
    /// decodes Main/High slowly and cannot take B-frames or H.265.
    Openh264,
}

/// Which library encodes a camera's annotated track (`annotated_encoder`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EncoderKind {
    /// openh264 in its low-complexity mode (built in).
    Openh264,
    /// libx264 through the system's libavcodec, preset `ultrafast`,
    /// `zerolatency`: 3.6 ms per 720p frame against openh264's 4.3 ms
    /// (`cargo bench --bench codec`, docs/benchmarks.md).
    #[default]
    X264,
}

/// The annotated track's encoder, whichever library runs it. Both make
/// constrained-baseline H.264 with SPS/PPS before each IDR, one access unit
/// per frame.
pub enum AnnotatedEncoder {
    Openh264(Box<encode::Encoder>),
    X264(x264::X264Encoder),
}

impl AnnotatedEncoder {
    /// An encoder of `kind` for `config`. Errors when the library cannot be
    /// opened or refuses the settings.
    pub fn new(kind: EncoderKind, config: encode::EncoderConfig) -> Result<AnnotatedEncoder, CodecError> {
        Ok(match kind {
            EncoderKind::Openh264 => AnnotatedEncoder::Openh264(Box::new(encode::Encoder::new(config)?)),
            EncoderKind::X264 => AnnotatedEncoder::X264(x264::X264Encoder::new(config, "ultrafast")?),
        })
    }

    /// Changes the target bitrate from the next frame on, without an IDR;
    /// errors on a bitrate the encoder refuses (under 10 kbit/s).
    pub fn set_bitrate(&mut self, bitrate_bps: u32) -> Result<(), CodecError> {
        match self {
            AnnotatedEncoder::Openh264(e) => e.set_bitrate(bitrate_bps),
            AnnotatedEncoder::X264(e) => e.set_bitrate(bitrate_bps),
        }
    }

    /// The config in use (width and height follow the last frame size).
    pub fn config(&self) -> &encode::EncoderConfig {
        match self {
            AnnotatedEncoder::Openh264(e) => e.config(),
            AnnotatedEncoder::X264(e) => e.config(),
        }
    }

    /// Encodes one frame (an IDR with SPS/PPS when `force_idr`); see
    /// [`encode::Encoder::encode`].
    pub fn encode(&mut self, frame: &VideoFrame, force_idr: bool) -> Result<AccessUnit, CodecError> {
        match self {
            AnnotatedEncoder::Openh264(e) => e.encode(frame, force_idr),
            AnnotatedEncoder::X264(e) => e.encode(frame, force_idr),
        }
    }
}

/// A camera stream's decoder, whichever library runs it. Access units go in
/// in decode order, pictures come out in presentation order.
pub enum VideoDecoder {
    Ffmpeg(ffmpeg::FfmpegDecoder),
    Openh264(decode::Decoder),
}

impl VideoDecoder {
    /// A decoder of `kind` for `codec`, waiting for its first keyframe. Errors
    /// when the library cannot be opened or cannot decode `codec` (openh264 and
    /// H.265).
    pub fn new(kind: DecoderKind, codec: VideoCodec) -> Result<VideoDecoder, CodecError> {
        match (kind, codec) {
            (DecoderKind::Ffmpeg, _) => Ok(VideoDecoder::Ffmpeg(ffmpeg::FfmpegDecoder::new(codec)?)),
            (DecoderKind::Openh264, VideoCodec::H264) => Ok(VideoDecoder::Openh264(decode::Decoder::new()?)),
            (DecoderKind::Openh264, other) => Err(CodecError::Init {
                what: "openh264 decoder",
                reason: format!("openh264 decodes H.264 only, this stream is {other}: set decoder = \"ffmpeg\""),
            }),
        }
    }

    /// Decodes one access unit and appends the pictures now ready to `out`
    /// (see [`ffmpeg::FfmpegDecoder::decode`]); `drain` also returns every picture
    /// held for reordering and starts over at the next keyframe.
    pub fn decode(&mut self, au: &AccessUnit, drain: bool, out: &mut Vec<VideoFrame>) -> Result<(), CodecError> {
        match self {
            VideoDecoder::Ffmpeg(d) => d.decode(au, drain, out),
            VideoDecoder::Openh264(d) => {
                if let Some(frame) = d.decode(au)? {
                    out.push(frame);
                }
                Ok(())
            }
        }
    }

    /// Counters since creation.
    pub fn stats(&self) -> DecodeStats {
        match self {
            VideoDecoder::Ffmpeg(d) => d.stats(),
            VideoDecoder::Openh264(d) => d.stats(),
        }
    }

    /// True until a keyframe decodes (at the start and after any error).
    pub fn waiting_for_keyframe(&self) -> bool {
        match self {
            VideoDecoder::Ffmpeg(d) => d.waiting_for_keyframe(),
            VideoDecoder::Openh264(d) => d.waiting_for_keyframe(),
        }
    }
}

/// What went wrong in the codec layer. Messages say what happened and to which
/// picture (by its 90 kHz pts) so logs can be read without the code.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// openh264 or libavcodec refused to create or initialise an encoder or decoder.
    #[error("cannot create the {what}: {reason}")]
    Init { what: &'static str, reason: String },
    /// An access unit could not be decoded (corrupt, truncated, or its reference
    /// picture was lost). The decoder now waits for the next keyframe.
    #[error("access unit at pts {pts_90k} (90 kHz) is undecodable: {reason}; waiting for the next keyframe")]
    Decode { pts_90k: i64, reason: String },
    /// openh264 failed to encode a frame.
    #[error("H.264 encoder failed on the frame at pts {pts_90k} (90 kHz): {reason}")]
    Encode { pts_90k: i64, reason: String },
    /// The encoder configuration cannot work (zero bitrate, zero fps, ...).
    #[error("invalid H.264 encoder config: {0}")]
    InvalidConfig(String),
    /// A frame handed to the encoder has a size or plane layout it cannot take.
    #[error("video frame {width}x{height} cannot be encoded: {reason}")]
    InvalidFrame { width: u32, height: u32, reason: String },
    /// An AVCC (length-prefixed) NAL unit runs past the end of its buffer.
    #[error("AVCC data: NAL unit at byte {offset} declares {declared} bytes but only {available} remain")]
    AvccTruncated { offset: usize, declared: usize, available: usize },
    /// AVCC NAL length fields are 1, 2 or 4 bytes long.
    #[error("AVCC NAL length size must be 1, 2 or 4 bytes, not {0}")]
    AvccLengthSize(usize),
    /// The `avcC` extra data (AVCDecoderConfigurationRecord) is malformed.
    #[error("invalid AVCDecoderConfigurationRecord (avcC extra data): {0}")]
    AvcConfig(String),
}

/// Readable names for openh264's `DECODING_STATE` bits (codec_app_def.h), which
/// the openh264 crate reports as the error's native code.
fn decoding_state_text(e: &openh264::Error) -> String {
    const BITS: [(i64, &str); 11] = [
        (0x01, "frame pending"),
        (0x02, "reference picture lost (frame gap: a dropped or undecodable frame before this one)"),
        (0x04, "bitstream error"),
        (0x08, "dependent layer lost"),
        (0x10, "no SPS/PPS received for this slice"),
        (0x20, "data error concealed"),
        (0x40, "reference list holds null pictures"),
        (0x1000, "invalid argument"),
        (0x2000, "decoder not initialised"),
        (0x4000, "out of memory"),
        (0x8000, "picture larger than the output buffer"),
    ];
    let code = e.native_code();
    if code == 0 {
        return openh264_text(e);
    }
    let names: Vec<&str> = BITS.iter().filter(|(bit, _)| code & bit != 0).map(|(_, name)| *name).collect();
    if names.is_empty() { format!("openh264 decoding state {code:#x}") } else { names.join(", ") }
}

/// Readable text for an openh264 encoder or setup error (`CM_RETURN` codes).
fn openh264_text(e: &openh264::Error) -> String {
    match e.native_code() {
        0 => {
            // The crate's Display is "OpenH264 encountered an error. Native:0. ...
            // User Message:Some(\"...\")": keep only the message part.
            let full = e.to_string();
            match full.split_once("User Message:") {
                Some((_, msg)) => {
                    let msg = msg.trim_end_matches(". Backtraces enabled.");
                    msg.trim_start_matches("Some(\"").trim_end_matches("\")").to_string()
                }
                None => full,
            }
        }
        1 => "invalid parameters (cmInitParaError)".to_string(),
        2 => "unknown reason (cmUnknownReason)".to_string(),
        3 => "out of memory (cmMallocMemeError)".to_string(),
        4 => "not initialised (cmInitExpected)".to_string(),
        5 => "unsupported data (cmUnsupportedData)".to_string(),
        n => format!("openh264 error code {n}"),
    }
}

/// Synthetic pictures and measures shared by the codec tests.
#[cfg(test)]
pub(crate) mod testutil {
    use std::time::{Duration, Instant, SystemTime};

    use crate::media::{AccessUnit, VideoFrame};

    use super::encode::{Encoder, EncoderConfig};

    /// Frame `i` of a moving picture: diagonal gradients plus a checker pattern
    /// that slides 3 px per frame, so P-frames have real motion to code.
    pub fn moving_frame(w: u32, h: u32, i: u32) -> VideoFrame {
        let mut rgb = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                let xs = x + 3 * i;
                let checker = if (xs / 16 + y / 16).is_multiple_of(2) { 60 } else { 0 };
                rgb.extend([
                    ((xs * 255 / w.max(1)) % 256) as u8,
                    ((y + i) * 255 / h.max(1)).min(255) as u8,
                    (100 + checker) as u8,
                ]);
            }
        }
        let mut f = VideoFrame::from_rgb(w, h, &rgb);
        f.pts_90k = i64::from(i) * 3000; // 30 fps
        f.received_at = Instant::now();
        f.captured_at =
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(u64::from(i));
        f
    }

    /// Access-unit bodies no decoder should show a picture from: noise, empty,
    /// bare start codes, and slice / SPS / PPS / SEI headers followed by noise.
    pub fn garbage_units() -> Vec<Vec<u8>> {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut garbage = vec![noise(&mut seed, 2000), Vec::new(), vec![0, 0, 1], vec![0, 0, 0, 1, 0x65]];
        for header in [0x65u8, 0x41, 0x67, 0x68, 0x06] {
            let mut g = vec![0, 0, 0, 1, header];
            g.extend(noise(&mut seed, 1500));
            garbage.push(g);
        }
        garbage
    }

    /// `n` pseudo-random bytes (xorshift64), the same for the same `seed`.
    pub fn noise(seed: &mut u64, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                (*seed >> 24) as u8
            })
            .collect()
    }

    /// PSNR of two Y planes of the same size, dB (99 when identical).
    pub fn psnr_y(a: &VideoFrame, b: &VideoFrame) -> f64 {
        assert_eq!((a.width, a.height), (b.width, b.height));
        let (w, h) = (a.width as usize, a.height as usize);
        let mut se = 0.0f64;
        for row in 0..h {
            let ra = &a.y[row * a.y_stride..][..w];
            let rb = &b.y[row * b.y_stride..][..w];
            se += ra.iter().zip(rb).map(|(&p, &q)| (f64::from(p) - f64::from(q)).powi(2)).sum::<f64>();
        }
        let mse = se / (w * h) as f64;
        if mse == 0.0 { 99.0 } else { 10.0 * (255.0f64 * 255.0 / mse).log10() }
    }

    /// A config for small test streams: 30 fps, the given GOP.
    pub fn config(w: u32, h: u32, gop_frames: u32) -> EncoderConfig {
        EncoderConfig { width: w, height: h, bitrate_bps: 1_000_000, max_fps: 30.0, gop_frames }
    }

    /// Encodes `n` moving frames; returns the source frames and their access units.
    pub fn encode_sequence(w: u32, h: u32, n: u32, gop_frames: u32) -> (Vec<VideoFrame>, Vec<AccessUnit>) {
        let mut enc = Encoder::new(config(w, h, gop_frames)).expect("encoder");
        let frames: Vec<VideoFrame> = (0..n).map(|i| moving_frame(w, h, i)).collect();
        let aus = frames.iter().map(|f| enc.encode(f, false).expect("encode")).collect();
        (frames, aus)
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::moving_frame;
    use super::*;

    /// Access-unit sizes in bytes of `n` frames of a 640x360 moving picture,
    /// starting at `first_bps` and changing the bitrate at each `(frame, bps)`
    /// step; asserts no IDR after the first frame.
    fn sizes(kind: EncoderKind, first_bps: u32, steps: &[(u32, u32)], n: u32) -> Vec<usize> {
        let config =
            encode::EncoderConfig { width: 640, height: 360, bitrate_bps: first_bps, max_fps: 30.0, gop_frames: 1000 };
        let mut enc = AnnotatedEncoder::new(kind, config).expect("encoder");
        (0..n)
            .map(|i| {
                if let Some(&(_, bps)) = steps.iter().find(|(at, _)| *at == i) {
                    enc.set_bitrate(bps).expect("bitrate accepted");
                    assert_eq!(enc.config().bitrate_bps, bps);
                }
                let au = enc.encode(&moving_frame(640, 360, i), false).expect("encode");
                assert_eq!(au.keyframe, i == 0, "{kind:?}: frame {i}: an IDR only at the start");
                au.data.len()
            })
            .collect()
    }

    fn mean(s: &[usize]) -> f64 {
        s.iter().sum::<usize>() as f64 / s.len() as f64
    }

    #[test]
    fn bitrate_changes_apply_at_once_without_an_idr() {
        for kind in [EncoderKind::Openh264, EncoderKind::X264] {
            // 1.5 Mbit/s, 500 kbit/s from frame 60, 1.5 Mbit/s again from frame 150 (30 fps).
            let s = sizes(kind, 1_500_000, &[(60, 500_000), (150, 1_500_000)], 270);
            // Each window starts a second after its change (x264's VBV is one second).
            let (high, low, again) = (mean(&s[20..60]), mean(&s[90..150]), mean(&s[180..270]));
            eprintln!("{kind:?}: {high:.0} → {low:.0} → {again:.0} bytes per frame");
            assert!(low * 2.0 < high, "{kind:?}: lowered three times, {high:.0} → {low:.0} bytes per frame");
            assert!(again > low * 2.0, "{kind:?}: raised three times, {low:.0} → {again:.0} bytes per frame");
            // 500 kbit/s at 30 fps is 2083 bytes a frame.
            assert!((1500.0..2700.0).contains(&low), "{kind:?}: {low:.0} bytes per frame at 500 kbit/s");
        }
        let mut enc = AnnotatedEncoder::new(EncoderKind::Openh264, testutil::config(64, 64, 10)).expect("encoder");
        assert!(enc.set_bitrate(5_000).is_err(), "under 10 kbit/s");
    }
}
