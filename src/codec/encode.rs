//! I420 [`VideoFrame`]s → H.264 access units over the openh264 encoder, for the
//! annotated track that browsers play.
//!
//! Owns the stream shape: constrained baseline (profile_idc 66 with
//! constraint_set0+1, `profile-level-id` 42c0xx, level 3.1 or the lowest level the
//! size/rate needs), one slice per picture, SPS+PPS in front of every IDR,
//! bitrate rate control without frame skipping, a fixed GOP plus IDRs on
//! request, BT.601 limited range signalled in the VUI, openh264's low-complexity
//! mode (cheapest CPU per frame). Does no packetisation or I/O; a size change
//! recreates the openh264 encoder.

use bytes::BytesMut;
/// openh264's speed/quality levels ([`Openh264Tuning::complexity`]).
pub use openh264::encoder::Complexity as Openh264Complexity;
use openh264::encoder::{
    BitRate, Complexity, Encoder as H264Encoder, EncoderConfig as H264Config, FrameRate, FrameType, IntraFramePeriod,
    Level, Profile, RateControlMode, SpsPpsStrategy, UsageType, VuiConfig,
};
use openh264::formats::YUVSource;
use openh264::{OpenH264API, Timestamp};

use super::{CodecError, openh264_text};
use crate::media::{AccessUnit, VideoFrame};

/// Largest picture openh264 encodes (level 5.2), either orientation.
const MAX_SIDE: (u32, u32) = (3840, 2160);

/// What the annotated stream should look like.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EncoderConfig {
    /// Picture width in pixels (even). Frames of another size recreate the encoder.
    pub width: u32,
    /// Picture height in pixels (even).
    pub height: u32,
    /// Target bitrate in bits per second (rate control in bitrate mode).
    pub bitrate_bps: u32,
    /// Expected frame rate in frames per second; the rate control spreads
    /// `bitrate_bps` over this many frames a second.
    pub max_fps: f32,
    /// IDR period in frames (the GOP); 1–2 s of frames suits viewers joining.
    pub gop_frames: u32,
}

impl EncoderConfig {
    /// A config with a 1 s GOP (`max_fps` frames, at least 1).
    pub fn new(width: u32, height: u32, bitrate_bps: u32, max_fps: f32) -> EncoderConfig {
        let gop_frames = if max_fps.is_finite() { max_fps.round().max(1.0) as u32 } else { 1 };
        EncoderConfig { width, height, bitrate_bps, max_fps, gop_frames }
    }

    fn validate(&self) -> Result<(), CodecError> {
        let bad = |what: String| Err(CodecError::InvalidConfig(what));
        if self.bitrate_bps < 10_000 || i32::try_from(self.bitrate_bps).is_err() {
            return bad(format!("bitrate_bps {} is outside 10 kbit/s to 2 Gbit/s", self.bitrate_bps));
        }
        if !(self.max_fps.is_finite() && (1.0..=240.0).contains(&self.max_fps)) {
            return bad(format!("max_fps {} is outside 1–240", self.max_fps));
        }
        if self.gop_frames == 0 {
            return bad("gop_frames is 0; use at least 1 (every frame an IDR)".into());
        }
        check_size(self.width, self.height)
    }

    fn openh264(&self, tuning: &Openh264Tuning) -> H264Config {
        H264Config::new()
            .usage_type(UsageType::CameraVideoRealTime)
            .profile(Profile::Baseline)
            .level(Level::Level_3_1) // a floor: openh264 raises it when the size or rate needs more
            .bitrate(BitRate::from_bps(self.bitrate_bps))
            .max_frame_rate(FrameRate::from_hz(self.max_fps))
            .rate_control_mode(RateControlMode::Bitrate)
            .skip_frames(false)
            .intra_frame_period(IntraFramePeriod::from_num_frames(self.gop_frames))
            .scene_change_detect(false) // IDRs only on the GOP and on request: steady bitrate
            .sps_pps_strategy(SpsPpsStrategy::ConstantId)
            .num_threads(1) // one camera per thread already; a single slice gains nothing from more
            .vui(VuiConfig::bt601())
            .complexity(tuning.complexity)
            .adaptive_quantization(tuning.adaptive_quantization)
            .background_detection(tuning.background_detection)
    }
}

/// openh264's speed/quality knobs. The default is what the annotated track
/// uses; the others exist to measure them (`cargo bench --bench codec`).
#[derive(Clone, Copy, Debug)]
pub struct Openh264Tuning {
    /// Low: 720p encode ~8 ms instead of ~11-14 ms, for ~0.35 dB Y-PSNR
    /// (demo clip at 1-2 Mbit/s); CPU is the scarce resource on the edge box.
    pub complexity: Complexity,
    /// Adaptive quantisation (openh264's default: on).
    pub adaptive_quantization: bool,
    /// Background detection (openh264's default: on).
    pub background_detection: bool,
}

impl Default for Openh264Tuning {
    fn default() -> Self {
        Openh264Tuning { complexity: Complexity::Low, adaptive_quantization: true, background_detection: true }
    }
}

fn check_size(width: u32, height: u32) -> Result<(), CodecError> {
    let (long, short) = (width.max(height), width.min(height));
    let reason = if width == 0 || height == 0 || width % 2 == 1 || height % 2 == 1 {
        "H.264 I420 needs even, non-zero width and height"
    } else if long > MAX_SIDE.0 || short > MAX_SIDE.1 {
        "openh264 encodes at most 3840x2160"
    } else {
        return Ok(());
    };
    Err(CodecError::InvalidFrame { width, height, reason: reason.into() })
}

/// The annotated track's H.264 encoder. `Send`, for the camera's media thread.
pub struct Encoder {
    config: EncoderConfig,
    tuning: Openh264Tuning,
    inner: H264Encoder,
    /// Output buffer; each access unit is split off it, so its allocation is
    /// reused once consumers drop earlier units.
    out: BytesMut,
    keyframe_requested: bool,
    /// Whether `inner` has encoded a frame (openh264 initialises on the first).
    started: bool,
}

fn new_inner(config: &EncoderConfig, tuning: &Openh264Tuning) -> Result<H264Encoder, CodecError> {
    H264Encoder::with_api_config(OpenH264API::from_source(), config.openh264(tuning))
        .map_err(|e| CodecError::Init { what: "openh264 encoder", reason: openh264_text(&e) })
}

impl Encoder {
    /// An encoder for `config`; the first frame it encodes is an IDR.
    pub fn new(config: EncoderConfig) -> Result<Encoder, CodecError> {
        Encoder::with_tuning(config, Openh264Tuning::default())
    }

    /// An encoder for `config` with openh264's knobs set as `tuning`.
    pub fn with_tuning(config: EncoderConfig, tuning: Openh264Tuning) -> Result<Encoder, CodecError> {
        config.validate()?;
        Ok(Encoder {
            inner: new_inner(&config, &tuning)?,
            config,
            tuning,
            out: BytesMut::new(),
            keyframe_requested: false,
            started: false,
        })
    }

    /// The config in use (width and height follow the last frame size).
    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// Changes the target bitrate (bits per second, 10 kbit/s to 2 Gbit/s)
    /// from the next frame on, without an IDR: openh264's rate control takes
    /// the new target (`ENCODER_OPTION_BITRATE`, and the maximum with it).
    /// Errors on a bitrate outside the range or when openh264 refuses it.
    pub fn set_bitrate(&mut self, bitrate_bps: u32) -> Result<(), CodecError> {
        let config = EncoderConfig { bitrate_bps, ..self.config };
        config.validate()?;
        if !self.started {
            // Not initialised yet: it takes the whole config on its first frame.
            self.inner = new_inner(&config, &self.tuning)?;
        } else {
            set_openh264_bitrate(&mut self.inner, self.config.bitrate_bps, bitrate_bps)?;
        }
        self.config = config;
        Ok(())
    }

    /// Makes the next encoded frame an IDR (a viewer joined, a PLI arrived).
    pub fn request_keyframe(&mut self) {
        self.keyframe_requested = true;
    }

    /// Encodes one frame; `force_idr` (or an earlier [`Encoder::request_keyframe`])
    /// makes it an IDR with SPS and PPS in front.
    ///
    /// Returns the access unit in Annex B (4-byte start codes) with the frame's
    /// `pts_90k`, `received_at` and `captured_at`, and `keyframe` set for IDRs.
    /// A frame of a new size recreates the encoder and starts with an IDR.
    pub fn encode(&mut self, frame: &VideoFrame, force_idr: bool) -> Result<AccessUnit, CodecError> {
        let source = FrameSource::new(frame)?;
        if (frame.width, frame.height) != (self.config.width, self.config.height) {
            let resized = EncoderConfig { width: frame.width, height: frame.height, ..self.config };
            self.inner = new_inner(&resized, &self.tuning)?;
            tracing::info!(
                from = %format_args!("{}x{}", self.config.width, self.config.height),
                to = %format_args!("{}x{}", frame.width, frame.height),
                "H.264 encoder recreated for a new frame size"
            );
            self.config = resized;
        }
        if force_idr || self.keyframe_requested {
            self.inner.force_intra_frame();
            self.keyframe_requested = false;
        }
        let err = |reason: String| CodecError::Encode { pts_90k: frame.pts_90k, reason };
        // openh264 rate control reads a millisecond timestamp (it copes with repeats).
        let ms = u64::try_from(frame.pts_90k.max(0) / 90).unwrap_or(0);
        let bitstream =
            self.inner.encode_at(&source, Timestamp::from_millis(ms)).map_err(|e| err(openh264_text(&e)))?;
        self.started = true;
        let keyframe = match bitstream.frame_type() {
            FrameType::IDR => true,
            FrameType::I | FrameType::P | FrameType::IPMixed => false,
            FrameType::Skip => return Err(err("openh264 skipped the frame although frame skipping is off".into())),
            FrameType::Invalid => return Err(err("openh264 produced no frame (invalid frame type)".into())),
        };
        for layer in (0..bitstream.num_layers()).filter_map(|i| bitstream.layer(i)) {
            for nal in (0..layer.nal_count()).filter_map(|i| layer.nal_unit(i)) {
                self.out.extend_from_slice(nal);
            }
        }
        if self.out.is_empty() {
            return Err(err("openh264 returned an empty access unit".into()));
        }
        Ok(AccessUnit::new(self.out.split().freeze(), frame.pts_90k, keyframe, frame.received_at, frame.captured_at))
    }
}

/// Sets an initialised openh264 encoder's target bitrate (all layers) and its
/// one layer's maximum, the maximum first when raising: openh264 refuses a
/// target over the layer's maximum.
#[allow(unsafe_code)]
fn set_openh264_bitrate(inner: &mut H264Encoder, from_bps: u32, to_bps: u32) -> Result<(), CodecError> {
    use openh264_sys2::{
        ENCODER_OPTION_BITRATE, ENCODER_OPTION_MAX_BITRATE, SBitrateInfo, SPATIAL_LAYER_0, SPATIAL_LAYER_ALL,
    };
    let refused = |reason: String| CodecError::Init { what: "openh264 encoder", reason };
    let bitrate = i32::try_from(to_bps).map_err(|_| refused(format!("bitrate {to_bps} bit/s is too large")))?;
    let target = (ENCODER_OPTION_BITRATE, SPATIAL_LAYER_ALL, "target");
    let max = (ENCODER_OPTION_MAX_BITRATE, SPATIAL_LAYER_0, "maximum");
    let order = if to_bps > from_bps { [max, target] } else { [target, max] };
    for (option, layer, what) in order {
        let mut info = SBitrateInfo { iLayer: layer, iBitrate: bitrate };
        // SAFETY: the encoder is initialised (it has encoded a frame), and both
        // options read one `SBitrateInfo`, which outlives the call.
        let rc = unsafe { inner.raw_api().set_option(option, std::ptr::addr_of_mut!(info).cast()) };
        if rc != 0 {
            return Err(refused(format!("openh264 refused the {what} bitrate {to_bps} bit/s (error {rc})")));
        }
    }
    Ok(())
}

/// A [`VideoFrame`] whose planes were checked to cover what openh264 reads
/// (it reads `stride × rows` through raw pointers).
struct FrameSource<'a> {
    frame: &'a VideoFrame,
}

impl<'a> FrameSource<'a> {
    fn new(frame: &'a VideoFrame) -> Result<FrameSource<'a>, CodecError> {
        let (width, height) = (frame.width, frame.height);
        check_size(width, height)?;
        let (w, h) = (width as usize, height as usize);
        let bad = |reason: String| Err(CodecError::InvalidFrame { width, height, reason });
        if frame.y_stride < w || frame.uv_stride < w / 2 {
            return bad(format!("strides {}/{} are narrower than the picture", frame.y_stride, frame.uv_stride));
        }
        let (y_len, uv_len) = (frame.y_stride * h, frame.uv_stride * (h / 2));
        if frame.y.len() < y_len || frame.u.len() < uv_len || frame.v.len() < uv_len {
            return bad(format!(
                "planes of {}/{}/{} bytes, strides {}/{} need {y_len}/{uv_len}/{uv_len}",
                frame.y.len(),
                frame.u.len(),
                frame.v.len(),
                frame.y_stride,
                frame.uv_stride
            ));
        }
        if i32::try_from(frame.y_stride).is_err() || i32::try_from(frame.uv_stride).is_err() {
            return bad("stride too large".into());
        }
        Ok(FrameSource { frame })
    }
}

impl YUVSource for FrameSource<'_> {
    fn dimensions(&self) -> (usize, usize) {
        (self.frame.width as usize, self.frame.height as usize)
    }

    fn strides(&self) -> (usize, usize, usize) {
        (self.frame.y_stride, self.frame.uv_stride, self.frame.uv_stride)
    }

    fn y(&self) -> &[u8] {
        &self.frame.y
    }

    fn u(&self) -> &[u8] {
        &self.frame.u
    }

    fn v(&self) -> &[u8] {
        &self.frame.v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::annexb::{self, nal_type};
    use crate::codec::decode::Decoder;
    use crate::codec::testutil::{config, encode_sequence, moving_frame, psnr_y};

    fn nal_types(au: &AccessUnit) -> Vec<u8> {
        annexb::nal_units(&au.data).filter_map(annexb::nal_type).collect()
    }

    fn sps(au: &AccessUnit) -> &[u8] {
        annexb::nal_units(&au.data).find(|n| annexb::nal_type(n) == Some(nal_type::SPS)).expect("an SPS")
    }

    #[test]
    fn first_unit_is_sps_pps_idr_in_constrained_baseline() {
        let (frames, aus) = encode_sequence(320, 240, 3, 30);
        assert!(aus[0].keyframe);
        assert!(aus[0].data.starts_with(&annexb::START_CODE));
        assert_eq!(nal_types(&aus[0]), [7, 8, 5]);
        assert_eq!(nal_types(&aus[1]), [1], "one slice per P picture, no parameter sets");
        let plid = annexb::profile_level_id(sps(&aus[0])).unwrap();
        assert_eq!(plid[0], 0x42, "baseline profile_idc");
        assert_eq!(plid[1] & 0x40, 0x40, "constraint_set1: constrained baseline");
        assert_eq!(plid[2], 31, "level 3.1 floor");
        assert_eq!(annexb::sps_resolution(sps(&aus[0])), Some((320, 240)));
        for (au, f) in aus.iter().zip(&frames) {
            assert_eq!((au.pts_90k, au.received_at, au.captured_at), (f.pts_90k, f.received_at, f.captured_at));
        }
        let mut forced_first = Encoder::new(config(320, 240, 30)).unwrap();
        assert_eq!(
            nal_types(&forced_first.encode(&frames[0], true).unwrap()),
            [7, 8, 5],
            "force before init is harmless"
        );
    }

    #[test]
    fn gop_and_forced_idrs_make_keyframes_with_parameter_sets() {
        let mut enc = Encoder::new(config(320, 240, 10)).unwrap();
        let mut keys = Vec::new();
        for i in 0..32 {
            let au = enc.encode(&moving_frame(320, 240, i), i == 15).unwrap();
            assert_eq!(au.keyframe, annexb::is_keyframe(&au.data), "frame {i}");
            assert_eq!(nal_types(&au).iter().filter(|&&t| matches!(t, 1..=5)).count(), 1, "one slice, frame {i}");
            if au.keyframe {
                assert_eq!(nal_types(&au), [7, 8, 5], "frame {i}");
                keys.push(i);
            }
            if i == 27 {
                enc.request_keyframe();
            }
        }
        // A forced IDR restarts openh264's GOP count.
        assert_eq!(keys, [0, 10, 15, 25, 28]);
    }

    #[test]
    fn rate_control_keeps_near_the_target_bitrate() {
        let mut enc = Encoder::new(EncoderConfig::new(320, 240, 300_000, 30.0)).unwrap();
        assert_eq!(enc.config().gop_frames, 30);
        let bytes: usize = (0..90).map(|i| enc.encode(&moving_frame(320, 240, i), false).unwrap().data.len()).sum();
        let bps = bytes as f64 * 8.0 / 3.0;
        assert!((200_000.0..400_000.0).contains(&bps), "{bps:.0} bit/s for a 300 kbit/s target");
    }

    #[test]
    fn a_new_frame_size_restarts_with_an_idr_of_that_size() {
        let mut enc = Encoder::new(config(320, 240, 30)).unwrap();
        let mut dec = Decoder::new().unwrap();
        for (i, (w, h)) in [(320, 240), (320, 240), (160, 96), (160, 96)].into_iter().enumerate() {
            let frame = moving_frame(w, h, i as u32);
            let au = enc.encode(&frame, false).unwrap();
            assert_eq!(au.keyframe, i % 2 == 0, "frame {i}");
            if au.keyframe {
                assert_eq!(annexb::sps_resolution(sps(&au)), Some((w, h)));
            }
            let out = dec.decode(&au).unwrap().unwrap();
            assert!(psnr_y(&out, &frame) > 30.0);
        }
        assert_eq!((enc.config().width, enc.config().height), (160, 96));
    }

    #[test]
    fn larger_sizes_get_the_level_they_need() {
        let mut enc = Encoder::new(EncoderConfig::new(1920, 1080, 4_000_000, 30.0)).unwrap();
        let au = enc.encode(&moving_frame(1920, 1080, 0), false).unwrap();
        assert_eq!(annexb::sps_resolution(sps(&au)), Some((1920, 1080)));
        assert_eq!(annexb::profile_level_id(sps(&au)).unwrap()[2], 40, "1080p30 needs level 4.0");
    }

    #[test]
    fn bad_frames_and_configs_are_errors_not_panics() {
        let mut enc = Encoder::new(config(320, 240, 30)).unwrap();
        let mut f = moving_frame(320, 240, 0);
        f.y.truncate(1000);
        assert!(matches!(enc.encode(&f, false), Err(CodecError::InvalidFrame { .. })));
        let odd = moving_frame(321, 240, 0);
        assert!(matches!(enc.encode(&odd, false), Err(CodecError::InvalidFrame { width: 321, .. })));
        let mut narrow = moving_frame(320, 240, 0);
        narrow.y_stride = 100;
        assert!(enc.encode(&narrow, false).is_err());
        assert!(enc.encode(&moving_frame(320, 240, 1), false).unwrap().keyframe, "still works after errors");
        for bad in [
            EncoderConfig { bitrate_bps: 0, ..config(320, 240, 30) },
            EncoderConfig { max_fps: 0.0, ..config(320, 240, 30) },
            EncoderConfig { max_fps: f32::NAN, ..config(320, 240, 30) },
            EncoderConfig { gop_frames: 0, ..config(320, 240, 30) },
            config(4000, 240, 30),
        ] {
            assert!(Encoder::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn encoder_moves_to_other_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<Encoder>();
    }
}
