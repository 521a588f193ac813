//! Reads the label burned into a decoded frame: the text line of the label box
//! as a bitmask (from the browser) against the server's own rendering
//! ([`infercast::overlay::Overlay`]) of each candidate label at every score
//! percent; the nearest rendering by Hamming distance names the label.

use std::time::{Instant, SystemTime};

use base64::Engine as _;
use infercast::media::VideoFrame;
use infercast::overlay::Overlay;

/// Text pixels: limited-range luma at or above this (the page thresholds full-range
/// RGB luma at 160 of 255, i.e. 16 + 160 × 219 / 255 = 153 limited).
const TEXT_LUMA: u8 = 153;

/// One frame's reading.
#[derive(Debug, Clone)]
pub struct Reading {
    /// The nearest label, `None` when the mask has almost no text pixels (no label drawn).
    pub label: Option<String>,
    /// Hamming distance to the nearest rendering, px.
    pub distance: u32,
    /// How much farther the nearest rendering of any other label is, px.
    pub margin: u32,
    /// Text pixels in the mask.
    pub ink: u32,
}

/// Renderings of candidate labels on a `width`×`height` frame, cut to `crop`.
pub struct LabelReader {
    crop: [usize; 4],
    /// (label, bitmask over the crop, one bit per px, row-major, LSB first).
    renderings: Vec<(String, Vec<u8>)>,
    /// Where any rendering's label box lies, as a bitmask over the crop: only
    /// these px are compared (beyond them a frame shows its picture).
    boxes: Vec<u8>,
}

impl LabelReader {
    /// Renders each of `labels` at scores 0 %..=100 % onto a black frame (the text)
    /// and a mid-grey one (where its box lies).
    pub fn new(labels: &[String], width: u32, height: u32, crop: [usize; 4]) -> LabelReader {
        let mut overlay = Overlay::new();
        let mut renderings = Vec::new();
        let mut boxes = vec![0u8; (crop[2] * crop[3]).div_ceil(8)];
        for label in labels {
            for percent in 0..=100u8 {
                let score = f32::from(percent) / 100.0;
                let mut frame = flat(width, height, 16);
                overlay.draw(&mut frame, label, score);
                renderings.push((label.clone(), mask_of(&frame, crop, |y| y >= TEXT_LUMA)));
                // On mid grey the box darkens every px it covers.
                let mut grey = flat(width, height, 128);
                overlay.draw(&mut grey, label, score);
                for (b, m) in boxes.iter_mut().zip(mask_of(&grey, crop, |y| y != 128)) {
                    *b |= m;
                }
            }
        }
        LabelReader { crop, renderings, boxes }
    }

    /// Reads a base64 bitmask of the crop (as `tests/browser/overlay.mjs` sends it).
    pub fn read(&self, mask_base64: &str) -> Reading {
        let mut mask = base64::engine::general_purpose::STANDARD.decode(mask_base64).expect("mask is base64");
        let [_, _, w, h] = self.crop;
        assert_eq!(mask.len(), (w * h).div_ceil(8), "mask size for crop {:?}", self.crop);
        for (m, b) in mask.iter_mut().zip(&self.boxes) {
            *m &= b;
        }
        let ink = mask.iter().map(|b| b.count_ones()).sum::<u32>();
        let distance = |r: &[u8]| mask.iter().zip(r).map(|(a, b)| (a ^ b).count_ones()).sum::<u32>();
        let mut best: Vec<(u32, &str)> = Vec::new();
        for (label, rendering) in &self.renderings {
            let d = distance(rendering);
            match best.iter_mut().find(|(_, l)| *l == label) {
                Some(entry) => entry.0 = entry.0.min(d),
                None => best.push((d, label)),
            }
        }
        best.sort();
        let (distance, label) = best[0];
        let margin = best.get(1).map_or(u32::MAX, |(d, _)| d - distance);
        // A label box's text line has hundreds of text px; a handful is noise.
        let label = (ink >= 40).then(|| label.to_owned());
        Reading { label, distance, margin, ink }
    }
}

/// An I420 frame of luma `y`, neutral chroma.
fn flat(width: u32, height: u32, y: u8) -> VideoFrame {
    let (w, h) = (width as usize, height as usize);
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    VideoFrame {
        width,
        height,
        y: vec![y; w * h],
        u: vec![128; cw * ch],
        v: vec![128; cw * ch],
        y_stride: w,
        uv_stride: cw,
        pts_90k: 0,
        received_at: Instant::now(),
        captured_at: SystemTime::now(),
    }
}

/// The px of `frame` over `crop` = [x, y, w, h] whose luma passes `test`, as a bitmask.
fn mask_of(frame: &VideoFrame, [x0, y0, w, h]: [usize; 4], test: impl Fn(u8) -> bool) -> Vec<u8> {
    let mut bits = vec![0u8; (w * h).div_ceil(8)];
    for row in 0..h {
        for col in 0..w {
            if test(frame.y[(y0 + row) * frame.y_stride + x0 + col]) {
                let i = row * w + col;
                bits[i >> 3] |= 1 << (i & 7);
            }
        }
    }
    bits
}
