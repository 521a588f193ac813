//! Plain media types shared by every stage: decoded I420 frames and their conversions.
//!
//! Nothing here does I/O or knows about cameras, codecs or models.

use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use bytes::Bytes;

pub mod scale;

/// The video codecs cameras send that infercast decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum VideoCodec {
    /// H.264 / AVC, every profile.
    #[serde(rename = "H.264")]
    H264,
    /// H.265 / HEVC (Main profile, 8 bit).
    #[serde(rename = "H.265")]
    H265,
}

impl VideoCodec {
    /// From the name the field uses (`H.264`, `H.265`), as sources report it.
    pub fn from_name(name: &str) -> Option<VideoCodec> {
        match name {
            "H.264" => Some(VideoCodec::H264),
            "H.265" => Some(VideoCodec::H265),
            _ => None,
        }
    }
}

impl std::fmt::Display for VideoCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VideoCodec::H264 => "H.264",
            VideoCodec::H265 => "H.265",
        })
    }
}

/// One H.264 access unit (all NAL units of one picture) as received from a
/// camera or produced by the encoder.
#[derive(Clone, Debug)]
pub struct AccessUnit {
    /// NAL units in Annex B form (each after a `00 00 00 01` start code). Keyframes
    /// carry their SPS and PPS in front of the IDR slice, so any decoder (or viewer)
    /// can start at one.
    pub data: Bytes,
    /// Presentation time in RTP 90 kHz ticks (from the camera's RTP timestamps).
    pub pts_90k: i64,
    /// True when the access unit holds an IDR picture.
    pub keyframe: bool,
    /// When infercast received the access unit (monotonic).
    pub received_at: Instant,
    /// When the camera captured the picture (wall clock): from RTCP sender reports
    /// when the camera sends them, else the receive time anchored at the first frame.
    pub captured_at: SystemTime,
    /// `data` cut into H.264 RTP payloads (RFC 6184), made once by the first
    /// viewer session that sends this access unit and shared by every clone (the
    /// other viewers). Empty until then; set only from `data`.
    pub rtp_payloads: Arc<OnceLock<Vec<Bytes>>>,
}

impl AccessUnit {
    pub fn new(data: Bytes, pts_90k: i64, keyframe: bool, received_at: Instant, captured_at: SystemTime) -> AccessUnit {
        AccessUnit { data, pts_90k, keyframe, received_at, captured_at, rtp_payloads: Arc::default() }
    }
}

/// A decoded picture in I420 (YUV 4:2:0, 8 bit, three planes), as an H.264 decoder
/// produces it.
///
/// Plane sizes: Y is `width × height` with `y_stride ≥ width`; U and V are
/// `⌈width/2⌉ × ⌈height/2⌉` with `uv_stride ≥ ⌈width/2⌉`. Sample values use the BT.601
/// limited ("TV") range: Y 16–235, U/V 16–240.
#[derive(Clone, Debug)]
pub struct VideoFrame {
    pub width: u32,
    pub height: u32,
    pub y: Vec<u8>,
    pub u: Vec<u8>,
    pub v: Vec<u8>,
    pub y_stride: usize,
    pub uv_stride: usize,
    /// Presentation time in RTP 90 kHz ticks.
    pub pts_90k: i64,
    /// When the frame's access unit was received (or, for a replayed file, scheduled).
    pub received_at: Instant,
    /// When the camera captured the picture (wall clock), see [`AccessUnit::captured_at`].
    pub captured_at: SystemTime,
}

/// A borrowed view of an I420 picture: planes, strides, width and height.
///
/// This is what the preprocessing needs, so frames owned by a decoder can be
/// classified without a copy.
#[derive(Clone, Copy, Debug)]
pub struct I420View<'a> {
    pub width: u32,
    pub height: u32,
    pub y: &'a [u8],
    pub u: &'a [u8],
    pub v: &'a [u8],
    pub y_stride: usize,
    pub uv_stride: usize,
}

impl VideoFrame {
    /// Borrows the planes as an [`I420View`].
    pub fn view(&self) -> I420View<'_> {
        I420View {
            width: self.width,
            height: self.height,
            y: &self.y,
            u: &self.u,
            v: &self.v,
            y_stride: self.y_stride,
            uv_stride: self.uv_stride,
        }
    }

    /// Converts packed 8-bit RGB (`width × height × 3` bytes, row-major) to I420 with
    /// the BT.601 limited-range matrix; each chroma sample averages its 2×2 block.
    ///
    /// Used to feed still photos and synthetic pictures through the camera path.
    /// Panics if `rgb.len() != width × height × 3` (a caller bug, not bad input).
    pub fn from_rgb(width: u32, height: u32, rgb: &[u8]) -> VideoFrame {
        let (w, h) = (width as usize, height as usize);
        assert_eq!(rgb.len(), w * h * 3, "RGB buffer does not match {width}x{height}");
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let mut y = vec![0u8; w * h];
        let mut u = vec![0u8; cw * ch];
        let mut v = vec![0u8; cw * ch];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            let (r, g, b) = (f32::from(px[0]), f32::from(px[1]), f32::from(px[2]));
            y[i] = (16.0 + 0.256_788 * r + 0.504_129 * g + 0.097_906 * b).round() as u8;
        }
        for cy in 0..ch {
            for cx in 0..cw {
                let (mut su, mut sv, mut n) = (0.0f32, 0.0f32, 0.0f32);
                for yy in (2 * cy)..(2 * cy + 2).min(h) {
                    for xx in (2 * cx)..(2 * cx + 2).min(w) {
                        let p = &rgb[(yy * w + xx) * 3..][..3];
                        let (r, g, b) = (f32::from(p[0]), f32::from(p[1]), f32::from(p[2]));
                        su += 128.0 - 0.148_223 * r - 0.290_993 * g + 0.439_216 * b;
                        sv += 128.0 + 0.439_216 * r - 0.367_788 * g - 0.071_427 * b;
                        n += 1.0;
                    }
                }
                u[cy * cw + cx] = (su / n).round().clamp(0.0, 255.0) as u8;
                v[cy * cw + cx] = (sv / n).round().clamp(0.0, 255.0) as u8;
            }
        }
        VideoFrame {
            width,
            height,
            y,
            u,
            v,
            y_stride: w,
            uv_stride: cw,
            pts_90k: 0,
            received_at: Instant::now(),
            captured_at: SystemTime::now(),
        }
    }
}

/// Converts one BT.601 limited-range YUV sample to RGB, each channel in `0.0..=255.0`.
#[inline]
pub fn yuv_to_rgb(y: f32, u: f32, v: f32) -> [f32; 3] {
    let c = 1.164_383 * (y - 16.0);
    let (d, e) = (u - 128.0, v - 128.0);
    [
        (c + 1.596_027 * e).clamp(0.0, 255.0),
        (c - 0.391_762 * d - 0.812_968 * e).clamp(0.0, 255.0),
        (c + 2.017_232 * d).clamp(0.0, 255.0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rgb_round_trips_through_i420_on_flat_colours() {
        for rgb in [[255u8, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128], [10, 200, 90]] {
            let pixels: Vec<u8> = rgb.iter().copied().cycle().take(4 * 4 * 3).collect();
            let f = VideoFrame::from_rgb(4, 4, &pixels);
            let back = yuv_to_rgb(f32::from(f.y[5]), f32::from(f.u[1]), f32::from(f.v[1]));
            for c in 0..3 {
                assert!((back[c] - f32::from(rgb[c])).abs() <= 3.0, "{rgb:?} -> {back:?}");
            }
        }
    }

    #[test]
    fn odd_sizes_get_rounded_up_chroma_planes() {
        let f = VideoFrame::from_rgb(3, 5, &[7u8; 3 * 5 * 3]);
        assert_eq!((f.y.len(), f.u.len(), f.v.len()), (15, 6, 6));
    }
}
