//! I420 [`VideoFrame`]s → H.264 access units with libx264 through FFmpeg's
//! libavcodec (the system library), for the annotated track browsers play.
//!
//! The same stream shape as the openh264 encoder ([`super::encode`]):
//! constrained baseline (no B-frames, CAVLC), one slice per picture, SPS+PPS in
//! front of every IDR (`repeat-headers`), bitrate with a one-second VBV,
//! a fixed GOP plus IDRs on request, no lookahead (`zerolatency`: one frame
//! in, one access unit out), one thread. Speed from the x264 preset
//! (`ultrafast` by default). A size change recreates the encoder.

use bytes::Bytes;
use ff::format::Pixel;
use ffmpeg_next as ff;

use super::CodecError;
use super::encode::EncoderConfig;
use crate::media::{AccessUnit, VideoFrame};

/// The annotated track's libx264 encoder. `Send`, for the camera's media thread.
pub struct X264Encoder {
    config: EncoderConfig,
    preset: &'static str,
    inner: ff::encoder::video::Encoder,
    packet: ff::Packet,
}

fn open(config: &EncoderConfig, preset: &str) -> Result<ff::encoder::video::Encoder, CodecError> {
    let init = |reason: String| CodecError::Init { what: "libx264 encoder (libavcodec)", reason };
    let codec =
        ff::encoder::find_by_name("libx264").ok_or_else(|| init("this FFmpeg was built without libx264".into()))?;
    let mut enc = ff::codec::Context::new_with_codec(codec).encoder().video().map_err(|e| init(e.to_string()))?;
    enc.set_width(config.width);
    enc.set_height(config.height);
    enc.set_format(Pixel::YUV420P);
    enc.set_time_base((1, 90_000));
    let fps = config.max_fps.round().max(1.0) as i32;
    enc.set_frame_rate(Some((fps, 1)));
    enc.set_gop(config.gop_frames);
    enc.set_max_b_frames(0);
    enc.set_bit_rate(config.bitrate_bps as usize);
    enc.set_max_bit_rate(config.bitrate_bps as usize);
    let bps = config.bitrate_bps.to_string();
    enc.set_threading(ff::threading::Config { kind: ff::threading::Type::Slice, count: 1, ..Default::default() });
    let mut options = ff::Dictionary::new();
    options.set("preset", preset);
    options.set("tune", "zerolatency");
    options.set("profile", "baseline");
    options.set("forced-idr", "1");
    // A one-second VBV (rc_buffer_size, which libavcodec compares before each
    // frame: set here, not in x264-params, or the first frame would clear it).
    options.set("bufsize", &bps);
    // One slice, parameter sets before each IDR, IDRs only on the GOP and on
    // request (steady bitrate), BT.601 limited range in the VUI.
    let params = "repeat-headers=1:scenecut=0:sliced-threads=0:slices=1:\
         colormatrix=smpte170m:colorprim=smpte170m:transfer=smpte170m:range=tv";
    options.set("x264-params", params);
    enc.open_with(options).map_err(|e| init(format!("cannot open with preset {preset}: {e}")))
}

impl X264Encoder {
    /// An encoder for `config` at x264 `preset` (`ultrafast`, `superfast`, …);
    /// the first frame it encodes is an IDR. Errors when libavcodec has no
    /// libx264 or refuses the settings.
    pub fn new(config: EncoderConfig, preset: &'static str) -> Result<X264Encoder, CodecError> {
        if config.width == 0 || config.height == 0 || config.width % 2 == 1 || config.height % 2 == 1 {
            return Err(CodecError::InvalidFrame {
                width: config.width,
                height: config.height,
                reason: "H.264 I420 needs even, non-zero width and height".into(),
            });
        }
        Ok(X264Encoder { inner: open(&config, preset)?, config, preset, packet: ff::Packet::empty() })
    }

    /// The config in use (width and height follow the last frame size).
    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// Changes the target bitrate (bits per second, at least 10 kbit/s) from
    /// the next frame on, without an IDR: libavcodec hands a changed
    /// `bit_rate`/`rc_max_rate` to x264 before each frame (`x264_encoder_reconfig`).
    /// The VBV buffer keeps its size (one second of the first bitrate).
    pub fn set_bitrate(&mut self, bitrate_bps: u32) -> Result<(), CodecError> {
        if bitrate_bps < 10_000 {
            return Err(CodecError::InvalidConfig(format!("bitrate_bps {bitrate_bps} is under 10 kbit/s")));
        }
        self.inner.set_bit_rate(bitrate_bps as usize);
        self.inner.set_max_bit_rate(bitrate_bps as usize);
        self.config.bitrate_bps = bitrate_bps;
        Ok(())
    }

    /// Encodes one frame; `force_idr` makes it an IDR with SPS and PPS in front.
    /// Returns the access unit in Annex B with the frame's times, `keyframe` set
    /// for IDRs. A frame of a new size recreates the encoder (starting with an IDR).
    pub fn encode(&mut self, frame: &VideoFrame, force_idr: bool) -> Result<AccessUnit, CodecError> {
        let fail = |reason: String| CodecError::Encode { pts_90k: frame.pts_90k, reason };
        if (frame.width, frame.height) != (self.config.width, self.config.height) {
            let resized = EncoderConfig { width: frame.width, height: frame.height, ..self.config };
            *self = X264Encoder::new(resized, self.preset)?;
        }
        let mut picture = ff::frame::Video::new(Pixel::YUV420P, frame.width, frame.height);
        let (w, h) = (frame.width as usize, frame.height as usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        copy_into(&mut picture, 0, &frame.y, frame.y_stride, w, h).map_err(&fail)?;
        copy_into(&mut picture, 1, &frame.u, frame.uv_stride, cw, ch).map_err(&fail)?;
        copy_into(&mut picture, 2, &frame.v, frame.uv_stride, cw, ch).map_err(&fail)?;
        picture.set_pts(Some(frame.pts_90k));
        picture.set_kind(if force_idr { ff::picture::Type::I } else { ff::picture::Type::None });
        self.inner.send_frame(&picture).map_err(|e| fail(format!("libx264 refused the frame: {e}")))?;
        self.inner.receive_packet(&mut self.packet).map_err(|e| fail(format!("libx264 gave no access unit: {e}")))?;
        let data = Bytes::copy_from_slice(self.packet.data().unwrap_or_default());
        let keyframe = self.packet.is_key();
        Ok(AccessUnit::new(data, frame.pts_90k, keyframe, frame.received_at, frame.captured_at))
    }
}

/// Copies `rows` rows of `width` bytes (read `stride` apart) into plane `i` of `dst`.
fn copy_into(
    dst: &mut ff::frame::Video,
    i: usize,
    src: &[u8],
    stride: usize,
    width: usize,
    rows: usize,
) -> Result<(), String> {
    let dst_stride = dst.stride(i);
    if src.len() < stride * (rows - 1) + width || dst_stride < width {
        return Err(format!("plane {i}: {} bytes with stride {stride} cannot hold {width}x{rows}", src.len()));
    }
    let plane = dst.data_mut(i);
    for (d, s) in plane.chunks_mut(dst_stride).zip(src.chunks(stride)).take(rows) {
        d[..width].copy_from_slice(&s[..width]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ffmpeg::FfmpegDecoder;
    use crate::codec::testutil::{config, moving_frame, psnr_y};
    use crate::media::VideoCodec;

    #[test]
    fn encodes_constrained_baseline_that_decodes_with_idrs_where_asked() {
        let mut enc = X264Encoder::new(config(320, 240, 10), "ultrafast").unwrap();
        let frames: Vec<VideoFrame> = (0..25).map(|i| moving_frame(320, 240, i)).collect();
        let aus: Vec<AccessUnit> = frames.iter().enumerate().map(|(i, f)| enc.encode(f, i == 13).unwrap()).collect();
        let keyframes: Vec<usize> = aus.iter().enumerate().filter(|(_, a)| a.keyframe).map(|(i, _)| i).collect();
        assert_eq!(keyframes, [0, 10, 13, 23], "GOP of 10 plus the forced IDR at 13 (which restarts the GOP)");
        // SPS (profile_idc 66, constraint_set0+1) in front of each IDR.
        for &k in &keyframes {
            let sps = crate::codec::annexb::nal_units(&aus[k].data).find(|n| n[0] & 0x1f == 7).expect("SPS");
            assert_eq!((sps[1], sps[2] & 0xc0), (66, 0xc0), "constrained baseline");
        }
        let mut dec = FfmpegDecoder::new(VideoCodec::H264).unwrap();
        let mut out = Vec::new();
        for au in &aus {
            dec.decode(au, false, &mut out).unwrap();
        }
        assert_eq!(out.len(), 25, "one picture per access unit, no reordering");
        for (got, src) in out.iter().zip(&frames) {
            assert_eq!(got.pts_90k, src.pts_90k);
            assert!(psnr_y(got, src) > 28.0, "PSNR {:.1}", psnr_y(got, src));
        }
    }

    #[test]
    fn a_new_size_restarts_with_an_idr() {
        let mut enc = X264Encoder::new(config(320, 240, 30), "ultrafast").unwrap();
        assert!(enc.encode(&moving_frame(320, 240, 0), false).unwrap().keyframe);
        assert!(!enc.encode(&moving_frame(320, 240, 1), false).unwrap().keyframe);
        let au = enc.encode(&moving_frame(160, 120, 2), false).unwrap();
        assert!(au.keyframe);
        assert_eq!((enc.config().width, enc.config().height), (160, 120));
    }
}
