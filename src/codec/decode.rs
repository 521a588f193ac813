//! H.264 access units → I420 [`VideoFrame`]s over the openh264 decoder.
//!
//! Owns keyframe gating: nothing is output before the first keyframe, nor after
//! an undecodable access unit until the next keyframe, so the classifier and
//! viewers never see pictures smeared by a lost reference. Expects camera
//! streams without B-frames (each access unit is flushed as it is decoded) and
//! does no I/O, reordering or colour conversion.

use openh264::OpenH264API;
use openh264::decoder::{DecodedYUV, Decoder as H264Decoder, DecoderConfig, Flush};
use openh264::formats::YUVSource;

use super::annexb::{self, nal_type};
use super::{CodecError, decoding_state_text, openh264_text};
use crate::media::{AccessUnit, VideoFrame};

/// Counters since the decoder was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Pictures output.
    pub decoded: u64,
    /// Access units dropped unread while waiting for a keyframe (at the start or
    /// after an error).
    pub skipped_waiting_for_keyframe: u64,
    /// Access units that failed to decode (corrupt, truncated, reference lost).
    pub errors: u64,
}

/// One camera stream's H.264 decoder. Not shared between streams; `Send`, so
/// it can live on the camera's media thread.
pub struct Decoder {
    inner: H264Decoder,
    waiting_for_keyframe: bool,
    stats: DecodeStats,
}

/// What an access unit holds, from its NAL unit types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Content {
    /// An IDR slice.
    Keyframe,
    /// Non-IDR slices only.
    Delta,
    /// No slice: parameter sets, SEI, delimiters.
    NoPicture,
}

fn content(data: &[u8]) -> Content {
    let mut found = Content::NoPicture;
    for nal in annexb::nal_units(data) {
        match annexb::nal_type(nal) {
            Some(nal_type::IDR_SLICE) => return Content::Keyframe,
            Some(1..=4) => found = Content::Delta,
            _ => {}
        }
    }
    found
}

fn new_inner() -> Result<H264Decoder, CodecError> {
    let config = DecoderConfig::new().flush_after_decode(Flush::Flush);
    H264Decoder::with_api_config(OpenH264API::from_source(), config)
        .map_err(|e| CodecError::Init { what: "openh264 decoder", reason: openh264_text(&e) })
}

impl Decoder {
    /// A decoder waiting for its first keyframe.
    pub fn new() -> Result<Decoder, CodecError> {
        Ok(Decoder { inner: new_inner()?, waiting_for_keyframe: true, stats: DecodeStats::default() })
    }

    /// Counters since creation.
    pub fn stats(&self) -> DecodeStats {
        self.stats
    }

    /// True until a keyframe decodes (at the start and after any error).
    pub fn waiting_for_keyframe(&self) -> bool {
        self.waiting_for_keyframe
    }

    /// Decodes one Annex B access unit into a new frame; see [`Decoder::decode_into`].
    pub fn decode(&mut self, au: &AccessUnit) -> Result<Option<VideoFrame>, CodecError> {
        let mut frame = VideoFrame {
            width: 0,
            height: 0,
            y: Vec::new(),
            u: Vec::new(),
            v: Vec::new(),
            y_stride: 0,
            uv_stride: 0,
            pts_90k: au.pts_90k,
            received_at: au.received_at,
            captured_at: au.captured_at,
        };
        Ok(self.decode_into(au, &mut frame)?.then_some(frame))
    }

    /// Decodes one Annex B access unit (all NAL units of one picture) into `out`,
    /// reusing its plane buffers; the fast path for a long-lived frame.
    ///
    /// Returns `Ok(true)` when `out` now holds the picture (tightly packed I420,
    /// `y_stride = width`, with the unit's `pts_90k`, `received_at` and
    /// `captured_at`), `Ok(false)` when there is no picture to show: waiting for
    /// a keyframe, or the unit held only parameter sets. Returns an error for a
    /// corrupt or truncated unit or one whose reference is lost; then nothing is
    /// output until the next keyframe. `out` is unspecified unless `Ok(true)`.
    pub fn decode_into(&mut self, au: &AccessUnit, out: &mut VideoFrame) -> Result<bool, CodecError> {
        let data = au.data.as_ref();
        if self.waiting_for_keyframe && !au.keyframe && content(data) == Content::Delta {
            self.stats.skipped_waiting_for_keyframe += 1;
            return Ok(false);
        }
        let outcome = match self.inner.decode(data) {
            Ok(Some(yuv)) => copy_picture(&yuv, out).map(|()| true),
            Ok(None) if content(data) == Content::NoPicture => Ok(false),
            Ok(None) => Err("no picture came out of an access unit holding a slice".to_string()),
            Err(e) => Err(decoding_state_text(&e)),
        };
        match outcome {
            Ok(shown) => {
                if shown {
                    out.pts_90k = au.pts_90k;
                    out.received_at = au.received_at;
                    out.captured_at = au.captured_at;
                    self.waiting_for_keyframe = false;
                    self.stats.decoded += 1;
                }
                Ok(shown)
            }
            Err(reason) => Err(self.fail(au, reason)),
        }
    }

    /// Counts an undecodable unit and waits for the next keyframe. When the unit
    /// was a keyframe carrying its own SPS, starts over with a fresh openh264
    /// decoder so no state from a broken stream outlives it.
    fn fail(&mut self, au: &AccessUnit, reason: String) -> CodecError {
        self.stats.errors += 1;
        self.waiting_for_keyframe = true;
        let data = au.data.as_ref();
        let carries_sps = annexb::nal_units(data).any(|n| annexb::nal_type(n) == Some(nal_type::SPS));
        if carries_sps && content(data) == Content::Keyframe {
            match new_inner() {
                Ok(fresh) => {
                    self.inner = fresh;
                    tracing::debug!(pts_90k = au.pts_90k, "keyframe failed to decode; H.264 decoder reset");
                }
                Err(e) => tracing::warn!(error = %e, "cannot reset the H.264 decoder"),
            }
        }
        CodecError::Decode { pts_90k: au.pts_90k, reason }
    }
}

/// Copies openh264's padded planes into `out` as tightly packed I420.
fn copy_picture(yuv: &DecodedYUV<'_>, out: &mut VideoFrame) -> Result<(), String> {
    let (w, h) = yuv.dimensions();
    let (y_stride, u_stride, v_stride) = yuv.strides();
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    copy_plane(&mut out.y, yuv.y(), y_stride, w, h).map_err(|e| format!("Y plane: {e}"))?;
    copy_plane(&mut out.u, yuv.u(), u_stride, cw, ch).map_err(|e| format!("U plane: {e}"))?;
    copy_plane(&mut out.v, yuv.v(), v_stride, cw, ch).map_err(|e| format!("V plane: {e}"))?;
    out.width = u32::try_from(w).map_err(|_| format!("width {w} out of range"))?;
    out.height = u32::try_from(h).map_err(|_| format!("height {h} out of range"))?;
    out.y_stride = w;
    out.uv_stride = cw;
    Ok(())
}

/// Replaces `dst` with `rows` rows of `width` bytes read `stride` apart from `src`.
pub(super) fn copy_plane(
    dst: &mut Vec<u8>,
    src: &[u8],
    stride: usize,
    width: usize,
    rows: usize,
) -> Result<(), String> {
    dst.clear();
    if width == 0 || rows == 0 {
        return Err(format!("empty {width}x{rows} picture"));
    }
    let needed = stride * (rows - 1) + width;
    if stride < width || src.len() < needed {
        return Err(format!("{} bytes with stride {stride}, {width}x{rows} needs {needed}", src.len()));
    }
    if stride == width {
        dst.extend_from_slice(&src[..width * rows]);
    } else {
        dst.reserve(width * rows);
        for row in src.chunks(stride).take(rows) {
            dst.extend_from_slice(&row[..width]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::codec::testutil::{encode_sequence, psnr_y};

    /// Feeds `aus` and returns, per unit, `Some(psnr)` for an output picture
    /// (against the source frame), `None` for no picture; errors are `None` too.
    fn run(dec: &mut Decoder, aus: &[AccessUnit], sources: &[VideoFrame]) -> Vec<Option<f64>> {
        aus.iter()
            .zip(sources)
            .map(|(au, src)| match dec.decode(au) {
                Ok(Some(f)) => {
                    assert_eq!((f.width, f.height), (src.width, src.height));
                    assert_eq!((f.pts_90k, f.received_at, f.captured_at), (au.pts_90k, au.received_at, au.captured_at));
                    Some(psnr_y(&f, src))
                }
                Ok(None) | Err(_) => None,
            })
            .collect()
    }

    fn with_data(au: &AccessUnit, data: Vec<u8>) -> AccessUnit {
        AccessUnit::new(Bytes::from(data), au.pts_90k, au.keyframe, au.received_at, au.captured_at)
    }

    #[test]
    fn decodes_what_the_encoder_made() {
        let (frames, aus) = encode_sequence(320, 240, 30, 30);
        let mut dec = Decoder::new().unwrap();
        let psnr = run(&mut dec, &aus, &frames);
        let worst = psnr.iter().map(|p| p.expect("every frame decodes")).fold(f64::MAX, f64::min);
        assert!(worst > 30.0, "worst Y PSNR {worst:.1} dB");
        assert_eq!(dec.stats(), DecodeStats { decoded: 30, skipped_waiting_for_keyframe: 0, errors: 0 });
    }

    #[test]
    fn decode_into_reuses_the_frame_buffers() {
        let (frames, aus) = encode_sequence(320, 240, 5, 30);
        let mut dec = Decoder::new().unwrap();
        let mut out = dec.decode(&aus[0]).unwrap().unwrap();
        let planes = (out.y.as_ptr(), out.u.as_ptr(), out.v.as_ptr());
        for (au, src) in aus.iter().zip(&frames).skip(1) {
            assert!(dec.decode_into(au, &mut out).unwrap());
            assert_eq!((out.y.as_ptr(), out.u.as_ptr(), out.v.as_ptr()), planes, "no reallocation");
            assert_eq!((out.y.len(), out.u.len(), out.y_stride, out.uv_stride), (320 * 240, 160 * 120, 320, 160));
            assert!(psnr_y(&out, src) > 30.0);
        }
    }

    #[test]
    fn skips_delta_frames_until_the_first_keyframe() {
        let (frames, aus) = encode_sequence(320, 240, 25, 10);
        let mut dec = Decoder::new().unwrap();
        let psnr = run(&mut dec, &aus[3..], &frames[3..]);
        assert!(psnr[..7].iter().all(Option::is_none), "{psnr:?}");
        assert!(psnr[7..].iter().all(|p| p.is_some_and(|db| db > 30.0)), "{psnr:?}");
        assert_eq!(dec.stats(), DecodeStats { decoded: 15, skipped_waiting_for_keyframe: 7, errors: 0 });
    }

    #[test]
    fn a_dropped_delta_frame_hides_pictures_until_the_next_keyframe() {
        let (frames, aus) = encode_sequence(320, 240, 25, 10);
        let mut dec = Decoder::new().unwrap();
        run(&mut dec, &aus[..4], &frames[..4]);
        let e = dec.decode(&aus[5]).unwrap_err(); // frame 4 was lost
        assert!(e.to_string().contains("reference picture lost"), "{e}");
        let psnr = run(&mut dec, &aus[6..], &frames[6..]);
        assert!(psnr[..4].iter().all(Option::is_none), "{psnr:?}");
        assert!(psnr[4..].iter().all(|p| p.is_some_and(|db| db > 30.0)), "{psnr:?}");
        let s = dec.stats();
        assert_eq!((s.errors, s.skipped_waiting_for_keyframe, s.decoded), (1, 4, 4 + 15));
    }

    #[test]
    fn truncated_units_are_errors_and_recovery_waits_for_a_keyframe() {
        let (frames, aus) = encode_sequence(320, 240, 30, 10);
        for at in [3usize, 10] {
            // 3: a truncated delta frame, 10: a truncated keyframe (then recovery waits for 20)
            let mut dec = Decoder::new().unwrap();
            run(&mut dec, &aus[..at], &frames[..at]);
            let half = aus[at].data[..aus[at].data.len() / 2].to_vec();
            assert!(dec.decode(&with_data(&aus[at], half)).is_err(), "truncated unit {at} must fail");
            let psnr = run(&mut dec, &aus[at + 1..], &frames[at + 1..]);
            let next_key = (at / 10 + 1) * 10 - at - 1;
            assert!(psnr[..next_key].iter().all(Option::is_none), "after cut at {at}: {psnr:?}");
            assert!(psnr[next_key..].iter().all(|p| p.is_some_and(|db| db > 30.0)), "after cut at {at}: {psnr:?}");
        }
    }

    #[test]
    fn survives_garbage_and_never_shows_a_smeared_picture() {
        let (frames, aus) = encode_sequence(320, 240, 30, 10);
        let mut garbage = crate::codec::testutil::garbage_units();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut sps_pps_then_noise = aus[0].data[..aus[0].data.len().min(40)].to_vec();
        sps_pps_then_noise.extend(crate::codec::testutil::noise(&mut seed, 3000));
        garbage.push(sps_pps_then_noise);

        for (i, g) in garbage.iter().enumerate() {
            let mut dec = Decoder::new().unwrap();
            run(&mut dec, &aus[..4], &frames[..4]);
            let _ = dec.decode(&with_data(&aus[4], g.clone())); // Err or Ok(None), never a panic
            let psnr = run(&mut dec, &aus[4..], &frames[4..]);
            assert!(psnr.iter().flatten().all(|&db| db > 30.0), "garbage #{i}: smeared output {psnr:?}");
            assert!(psnr[6..].iter().all(Option::is_some), "garbage #{i}: no recovery at the keyframe {psnr:?}");
        }
        // Garbage alone, before any keyframe.
        let mut dec = Decoder::new().unwrap();
        for g in &garbage {
            assert!(!matches!(dec.decode(&with_data(&aus[1], g.clone())), Ok(Some(_))));
        }
        assert!(run(&mut dec, &aus, &frames).iter().all(Option::is_some));
    }

    #[test]
    fn decoder_moves_to_other_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<Decoder>();
    }
}
