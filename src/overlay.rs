//! Draws the latest classification label and score onto decoded I420 frames, in place.
//!
//! Owns the embedded font (DejaVu Sans Bold, `assets/fonts/`, Bitstream Vera licence) and
//! the rasterised label. It must not allocate or rasterise per frame: the label is turned
//! into a per-pixel blend table ([`Sprite`]) once per (text, score %, frame size), and each
//! frame only applies that table, `out = (in × mul + add) / 256`, to the pixels under it.

use ab_glyph::{Font, FontArc, GlyphId, PxScale, ScaleFont, point};

use crate::media::VideoFrame;

/// DejaVu Sans Bold, compiled into the binary so drawing needs no file at run time.
const FONT_TTF: &[u8] = include_bytes!("../assets/fonts/DejaVuSans-Bold.ttf");

/// Text line height is the frame height divided by this (px per px).
const TEXT_HEIGHT_DIVISOR: u32 = 18;
/// Smallest text line height, px: below this DejaVu stops being legible.
const MIN_TEXT_PX: u32 = 10;
/// Largest text line height, px (8K's share): bounds the work a bogus frame size can cause.
const MAX_TEXT_PX: u32 = 240;
/// Labels longer than this many chars are cut before layout (no frame can show more).
const MAX_LABEL_CHARS: usize = 256;

/// Fraction of the picture's luma excursion above black (16) kept under the box.
const BOX_LUMA_KEEP: f32 = 0.35;
/// Fraction of the picture's chroma excursion from neutral (128) kept under the box.
const BOX_CHROMA_KEEP: f32 = 0.5;
/// Text colour: limited-range white, Y 235 on neutral chroma.
const TEXT_Y: f32 = 235.0;
/// Unfilled part of the score bar: opaque dark grey, Y 60 on neutral chroma.
const TRACK_Y: f32 = 60.0;
/// Filled part of the score bar, (Y, U, V): BT.601 limited range of RGB (40, 200, 80).
const BAR_YUV: [f32; 3] = [134.9, 99.0, 66.3];

/// Draws a label box ("espresso 87%" over a score bar) at the top-left of frames.
///
/// Keep one per camera: it caches the last label's blend table, so drawing the same
/// label on the next frame of the same size costs only the blend (≈ box area).
pub struct Overlay {
    font: FontArc,
    cache: Option<Sprite>,
}

impl Default for Overlay {
    fn default() -> Self {
        Self::new()
    }
}

impl Overlay {
    /// Loads the embedded font; cannot fail.
    pub fn new() -> Overlay {
        let font = FontArc::try_from_slice(FONT_TTF).expect("embedded font is valid");
        Overlay { font, cache: None }
    }

    /// Draws `text` (e.g. "espresso") and `score` (probability, `0.0..=1.0`, clamped; NaN
    /// counts as 0) at the top-left of `frame`, shown as "espresso 87%" over a bar whose
    /// length is proportional to the score.
    ///
    /// Text line height is `frame.height / 18` px (10 to 240 px); labels too wide for the
    /// frame end in "…", and everything is clipped to the frame. Characters the font lacks
    /// show as its missing-glyph box. Never panics, whatever the frame size, strides or
    /// plane lengths: rows that fall outside a plane are skipped.
    pub fn draw(&mut self, frame: &mut VideoFrame, text: &str, score: f32) {
        let percent = percent(score);
        let (w, h) = (frame.width, frame.height);
        if self.cache.as_ref().is_none_or(|s| !s.key.matches(text, percent, w, h)) {
            let key = LabelKey { text: text.to_owned(), percent, width: w, height: h };
            self.cache = Some(Sprite::build(&self.font, key));
        }
        if let Some(sprite) = &self.cache {
            sprite.apply(frame);
        }
    }
}

/// What the cached sprite was built for; any change means a rebuild.
#[derive(Debug)]
struct LabelKey {
    text: String,
    /// Score in whole percent, `0..=100`.
    percent: u8,
    /// Frame size, px.
    width: u32,
    height: u32,
}

impl LabelKey {
    /// Compares without building a key, so a cache hit allocates nothing.
    fn matches(&self, text: &str, percent: u8, width: u32, height: u32) -> bool {
        self.text == text && self.percent == percent && self.width == width && self.height == height
    }
}

/// A score (probability) in whole percent, `0..=100`: clamped, NaN counts as 0.
fn percent(score: f32) -> u8 {
    let score = if score.is_nan() { 0.0 } else { score.clamp(0.0, 1.0) };
    (score * 100.0).round() as u8
}

/// Box geometry for one frame size, all in luma px.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    /// Text line height (ascent − descent).
    text_px: usize,
    /// Box offset from the frame's top-left corner (even, so chroma lines up).
    margin: usize,
    /// Space between the box edge and its contents.
    pad: usize,
    /// Space between the text line and the bar.
    gap: usize,
    bar_h: usize,
    /// Widest the text or bar may be while the box stays inside the frame.
    max_inner_w: usize,
}

impl Geometry {
    fn new(width: u32, height: u32) -> Geometry {
        let (w, h) = (width as usize, height as usize);
        let text_px = (height / TEXT_HEIGHT_DIVISOR).clamp(MIN_TEXT_PX, MAX_TEXT_PX) as usize;
        let margin = (text_px / 4).min(w / 16).min(h / 16) & !1;
        let pad = (text_px / 4).max(1);
        Geometry {
            text_px,
            margin,
            pad,
            gap: (pad / 2).max(1),
            bar_h: (text_px / 6).max(2),
            max_inner_w: w.saturating_sub(2 * margin + 2 * pad),
        }
    }
}

/// A rasterised line of text: coverage `0.0..=1.0`, `width × height` row-major.
struct Coverage {
    width: usize,
    height: usize,
    alpha: Vec<f32>,
}

/// Lays out `chars` from x = 0: each glyph and its pen position, px, plus the final pen x.
fn layout<F: Font>(font: &impl ScaleFont<F>, chars: impl Iterator<Item = char>) -> (Vec<(GlyphId, f32)>, f32) {
    let mut glyphs = Vec::new();
    let mut pen = 0.0f32;
    let mut prev: Option<GlyphId> = None;
    for c in chars {
        let id = font.glyph_id(if c.is_control() { ' ' } else { c });
        if let Some(p) = prev {
            pen += font.kern(p, id);
        }
        glyphs.push((id, pen));
        pen += font.h_advance(id);
        prev = Some(id);
    }
    (glyphs, pen)
}

/// Builds the shown string: `label percent%`, with the label cut and "…" appended when the
/// whole does not fit in `max_w` px. Keeps the score visible whenever it fits at all.
fn fit_text<F: Font>(font: &impl ScaleFont<F>, label: &str, percent: u8, max_w: f32) -> String {
    let label: String = label.trim().chars().take(MAX_LABEL_CHARS).collect();
    let score = format!("{percent}%");
    let full = if label.is_empty() { score.clone() } else { format!("{label} {score}") };
    if layout(font, full.chars()).1 <= max_w {
        return full;
    }
    let tail = format!("… {score}");
    let (tail_w, (label_glyphs, _)) = (layout(font, tail.chars()).1, layout(font, label.chars()));
    // Pen position of glyph k is the width of the first k chars.
    let keep = label_glyphs.iter().take_while(|&&(_, pen)| pen + tail_w <= max_w).count().saturating_sub(1);
    if keep == 0 {
        return score;
    }
    let cut: String = label.chars().take(keep).collect();
    format!("{}{tail}", cut.trim_end())
}

/// Rasterises `text` into a coverage bitmap `text_px` high and at most `max_w` wide.
fn rasterise(font: &FontArc, text: &str, text_px: usize, max_w: usize) -> Coverage {
    let scaled = font.as_scaled(PxScale::from(text_px as f32));
    let (glyphs, pen) = layout(&scaled, text.chars());
    let (width, height) = ((pen.ceil() as usize + 1).min(max_w), text_px);
    let mut alpha = vec![0.0f32; width * height];
    let baseline = scaled.ascent();
    for (id, x) in glyphs {
        let glyph = id.with_scale_and_position(scaled.scale(), point(x, baseline));
        let Some(outlined) = scaled.outline_glyph(glyph) else { continue };
        let bounds = outlined.px_bounds();
        outlined.draw(|gx, gy, c| {
            let (x, y) = (bounds.min.x as i64 + i64::from(gx), bounds.min.y as i64 + i64::from(gy));
            if (0..width as i64).contains(&x) && (0..height as i64).contains(&y) {
                let a = &mut alpha[y as usize * width + x as usize];
                *a = (*a + c).min(1.0);
            }
        });
    }
    Coverage { width, height, alpha }
}

/// An affine per-sample map `out = in × mul + add` (floats while building).
#[derive(Clone, Copy, Debug)]
struct Affine {
    mul: f32,
    add: f32,
}

impl Affine {
    const IDENTITY: Affine = Affine { mul: 1.0, add: 0.0 };

    /// Keeps `keep` of the distance from `target`: `out = target + (in − target) × keep`.
    fn toward(target: f32, keep: f32) -> Affine {
        Affine { mul: keep, add: target * (1.0 - keep) }
    }

    /// Paints `value` over this map with opacity `alpha` (`0.0..=1.0`).
    fn paint(self, value: f32, alpha: f32) -> Affine {
        Affine { mul: self.mul * (1.0 - alpha), add: self.add * (1.0 - alpha) + value * alpha }
    }
}

/// One plane's blend table over a `width × height` rectangle at (`x0`, `y0`), in that
/// plane's samples: `out = (in × mul + add + 128) >> 8`, where `mul ≤ 256` and
/// `add ≤ 255 × (256 − mul)`, so the sum fits in `u16` and the result in `u8`.
struct PlaneBlend {
    x0: usize,
    y0: usize,
    width: usize,
    mul: Vec<u16>,
    add: Vec<u16>,
}

impl PlaneBlend {
    fn new(x0: usize, y0: usize, width: usize, maps: &[Affine]) -> PlaneBlend {
        let (mut mul, mut add) = (Vec::with_capacity(maps.len()), Vec::with_capacity(maps.len()));
        for m in maps {
            let m16 = (m.mul * 256.0).round().clamp(0.0, 256.0) as u16;
            let a16 = (m.add * 256.0).round().clamp(0.0, 255.0 * f32::from(256 - m16)) as u16;
            mul.push(m16);
            add.push(a16);
        }
        PlaneBlend { x0, y0, width, mul, add }
    }

    /// Blends into `plane` (rows `stride` bytes apart); rows outside it are skipped.
    fn apply(&self, plane: &mut [u8], stride: usize) {
        if self.width == 0 {
            return;
        }
        let rows = self.mul.chunks_exact(self.width).zip(self.add.chunks_exact(self.width));
        for (r, (mul, add)) in rows.enumerate() {
            let start = (self.y0 + r) * stride + self.x0;
            let Some(row) = plane.get_mut(start..start + self.width) else { return };
            for ((p, &m), &a) in row.iter_mut().zip(mul).zip(add) {
                *p = ((u16::from(*p) * m + a + 128) >> 8) as u8;
            }
        }
    }
}

/// The rendered label for one [`LabelKey`]: blend tables for Y, U and V.
struct Sprite {
    key: LabelKey,
    y: PlaneBlend,
    u: PlaneBlend,
    v: PlaneBlend,
}

impl Sprite {
    fn build(font: &FontArc, key: LabelKey) -> Sprite {
        let g = Geometry::new(key.width, key.height);
        let scaled = font.as_scaled(PxScale::from(g.text_px as f32));
        let text = fit_text(&scaled, &key.text, key.percent, g.max_inner_w as f32);
        let cov = rasterise(font, &text, g.text_px, g.max_inner_w);

        let inner_w = cov.width.max(3 * g.text_px).min(g.max_inner_w);
        let box_w = (2 * g.pad + inner_w).next_multiple_of(2);
        let box_h = (2 * g.pad + g.text_px + g.gap + g.bar_h).next_multiple_of(2);
        let (fw, fh) = (key.width as usize, key.height as usize);
        let (x0, y0) = (g.margin.min(fw), g.margin.min(fh));
        let (w, h) = (box_w.min(fw - x0), box_h.min(fh - y0));

        let bar_top = g.pad + g.text_px + g.gap;
        let fill_w = inner_w as f32 * f32::from(key.percent) / 100.0;
        let luma_box = Affine::toward(16.0, BOX_LUMA_KEEP);
        let chroma_box = Affine::toward(128.0, BOX_CHROMA_KEEP);
        let mut luma = vec![luma_box; w * h];
        let (mut u, mut v) = (vec![chroma_box; w * h], vec![chroma_box; w * h]);
        for row in 0..h {
            for col in 0..w {
                let i = row * w + col;
                let (tx, ty) = (col.wrapping_sub(g.pad), row.wrapping_sub(g.pad));
                if tx < cov.width && ty < cov.height {
                    let a = cov.alpha[ty * cov.width + tx];
                    luma[i] = luma[i].paint(TEXT_Y, a);
                    u[i] = u[i].paint(128.0, a);
                    v[i] = v[i].paint(128.0, a);
                } else if tx < inner_w && (bar_top..bar_top + g.bar_h).contains(&row) {
                    let fill = (fill_w - tx as f32).clamp(0.0, 1.0);
                    luma[i] = Affine::toward(TRACK_Y, 0.0).paint(BAR_YUV[0], fill);
                    u[i] = Affine::toward(128.0, 0.0).paint(BAR_YUV[1], fill);
                    v[i] = Affine::toward(128.0, 0.0).paint(BAR_YUV[2], fill);
                }
            }
        }
        let cw = w.div_ceil(2);
        Sprite {
            y: PlaneBlend::new(x0, y0, w, &luma),
            u: PlaneBlend::new(x0 / 2, y0 / 2, cw, &subsample(&u, w, h)),
            v: PlaneBlend::new(x0 / 2, y0 / 2, cw, &subsample(&v, w, h)),
            key,
        }
    }

    fn apply(&self, frame: &mut VideoFrame) {
        self.y.apply(&mut frame.y, frame.y_stride);
        self.u.apply(&mut frame.u, frame.uv_stride);
        self.v.apply(&mut frame.v, frame.uv_stride);
    }
}

/// Averages each 2×2 block of a `w × h` map (edge blocks over the samples they have),
/// giving the map for the chroma sample that block shares.
fn subsample(maps: &[Affine], w: usize, h: usize) -> Vec<Affine> {
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let mut out = vec![Affine::IDENTITY; cw * ch];
    for (i, o) in out.iter_mut().enumerate() {
        let (cx, cy) = (i % cw, i / cw);
        let (mut sum, mut n) = (Affine { mul: 0.0, add: 0.0 }, 0.0f32);
        for y in (2 * cy)..(2 * cy + 2).min(h) {
            for x in (2 * cx)..(2 * cx + 2).min(w) {
                sum = Affine { mul: sum.mul + maps[y * w + x].mul, add: sum.add + maps[y * w + x].add };
                n += 1.0;
            }
        }
        *o = Affine { mul: sum.mul / n, add: sum.add / n };
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Instant, SystemTime};

    use super::*;

    /// A flat-colour frame whose rows carry `pad` extra bytes (chroma: `pad / 2 + 1`) set to 7.
    fn flat(w: u32, h: u32, pad: usize, [y, u, v]: [u8; 3]) -> VideoFrame {
        let (w, h, cw, ch) = (w as usize, h as usize, (w as usize).div_ceil(2), (h as usize).div_ceil(2));
        let plane = |width: usize, rows: usize, stride: usize, value: u8| -> Vec<u8> {
            (0..rows * stride).map(|i| if i % stride < width { value } else { 7 }).collect()
        };
        let (y_stride, uv_stride) = (w + pad, cw + pad / 2 + usize::from(pad > 0));
        VideoFrame {
            width: w as u32,
            height: h as u32,
            y: plane(w, h, y_stride, y),
            u: plane(cw, ch, uv_stride, u),
            v: plane(cw, ch, uv_stride, v),
            y_stride,
            uv_stride,
            pts_90k: 0,
            received_at: Instant::now(),
            captured_at: SystemTime::now(),
        }
    }

    /// Bounding box `(x0, y0, x1, y1)` (exclusive end) of luma samples that differ.
    fn changed_box(before: &VideoFrame, after: &VideoFrame) -> Option<(usize, usize, usize, usize)> {
        let mut bbox: Option<(usize, usize, usize, usize)> = None;
        for y in 0..before.height as usize {
            for x in 0..before.width as usize {
                let i = y * before.y_stride + x;
                if before.y[i] != after.y[i] {
                    let b = bbox.get_or_insert((x, y, x + 1, y + 1));
                    *b = (b.0.min(x), b.1.min(y), b.2.max(x + 1), b.3.max(y + 1));
                }
            }
        }
        bbox
    }

    const GREY: [u8; 3] = [180, 128, 128];

    #[test]
    fn changes_the_label_region_and_nothing_else() {
        let before = flat(640, 360, 0, [180, 90, 170]);
        let mut after = before.clone();
        Overlay::new().draw(&mut after, "espresso", 0.87);
        let (x0, y0, x1, y1) = changed_box(&before, &after).expect("overlay changed nothing");
        assert!(x0 <= 10 && y0 <= 10 && x1 < 320 && y1 < 90, "label box at {x0},{y0}..{x1},{y1}");
        // Outside the box every sample of every plane is untouched.
        let (cx1, cy1) = (x1.div_ceil(2), y1.div_ceil(2));
        for (i, (b, a)) in before.u.iter().zip(&after.u).enumerate() {
            let (x, y) = (i % before.uv_stride, i / before.uv_stride);
            if x >= cx1 || y >= cy1 {
                assert_eq!((b, after.v[i]), (a, before.v[i]), "chroma changed at {x},{y}");
            }
        }
        assert_eq!(before.y[359 * 640..], after.y[359 * 640..]);
    }

    #[test]
    fn text_height_scales_with_frame_height() {
        let mut overlay = Overlay::new();
        let height_at = |overlay: &mut Overlay, w, h| {
            let before = flat(w, h, 0, GREY);
            let mut after = before.clone();
            overlay.draw(&mut after, "espresso", 0.5);
            let (_, y0, _, y1) = changed_box(&before, &after).expect("overlay changed nothing");
            y1 - y0
        };
        let (small, large) = (height_at(&mut overlay, 176, 144), height_at(&mut overlay, 3840, 2160));
        assert!((14..=30).contains(&small), "144p box {small} px high");
        assert!(large > 8 * small && large < 2160 / 8, "2160p box {large} px high vs {small}");
    }

    #[test]
    fn text_is_white_on_a_dark_box() {
        let before = flat(1280, 720, 0, [180, 80, 180]);
        let mut f = before.clone();
        Overlay::new().draw(&mut f, "espresso", 0.87);
        let g = Geometry::new(1280, 720);
        let (top, bottom) = (g.margin + g.pad, g.margin + g.pad + g.text_px);
        let rows = || (top..bottom).flat_map(|y| (g.margin..400).map(move |x| (x, y)));
        let bright: Vec<(usize, usize)> = rows().filter(|&(x, y)| f.y[y * 1280 + x] > 200).collect();
        let dark = rows().filter(|&(x, y)| f.y[y * 1280 + x] < 90).count();
        assert!(bright.len() > 1000 && dark > 2 * bright.len(), "{} bright, {dark} dark", bright.len());
        // Where a whole 2×2 block is glyph, its chroma is neutral: white, not tinted.
        let solid = bright.iter().filter(|&&(x, y)| {
            let (x, y) = (x & !1, y & !1);
            [(x, y), (x + 1, y), (x, y + 1), (x + 1, y + 1)].iter().all(|&(x, y)| f.y[y * 1280 + x] > 230)
        });
        for &(x, y) in solid {
            let c = y / 2 * f.uv_stride + x / 2;
            assert!(f.u[c].abs_diff(128) < 16 && f.v[c].abs_diff(128) < 16, "tinted text at {x},{y}");
        }
    }

    #[test]
    fn bar_length_follows_the_score() {
        let mut overlay = Overlay::new();
        let g = Geometry::new(1280, 720);
        let bar_row = g.margin + g.pad + g.text_px + g.gap + g.bar_h / 2;
        let mut green_px = |score: f32| {
            let mut f = flat(1280, 720, 0, GREY);
            overlay.draw(&mut f, "espresso", score);
            f.y[bar_row * 1280..][..1280].iter().filter(|&&y| y.abs_diff(BAR_YUV[0] as u8) <= 2).count()
        };
        let (quarter, three_quarters) = (green_px(0.25), green_px(0.75));
        assert!(quarter > 20 && three_quarters.abs_diff(3 * quarter) <= 6, "{quarter} vs {three_quarters}");
        assert_eq!(green_px(f32::NAN), green_px(-3.0));
        assert_eq!(green_px(7.0), green_px(1.0));
    }

    #[test]
    fn long_labels_end_in_an_ellipsis_and_keep_the_score() {
        let font = FontArc::try_from_slice(FONT_TTF).expect("embedded font is valid");
        let scaled = font.as_scaled(PxScale::from(40.0));
        let fitted = fit_text(&scaled, &"hippopotamus ".repeat(20), 87, 600.0);
        assert!(fitted.ends_with("… 87%") && fitted.starts_with("hippo"), "{fitted}");
        assert!(layout(&scaled, fitted.chars()).1 <= 600.0);
        assert_eq!(fit_text(&scaled, "espresso", 87, 600.0), "espresso 87%");
        assert_eq!(fit_text(&scaled, "", 5, 600.0), "5%");
        assert_eq!(fit_text(&scaled, "espresso", 87, 100.0), "87%");
    }

    #[test]
    fn writes_nothing_into_row_padding() {
        let mut f = flat(177, 145, 13, GREY);
        Overlay::new().draw(&mut f, "espresso", 0.9);
        for (plane, stride, width) in [(&f.y, f.y_stride, 177), (&f.u, f.uv_stride, 89), (&f.v, f.uv_stride, 89)] {
            assert!(plane.chunks(stride).all(|row| row[width..].iter().all(|&b| b == 7)));
        }
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let long = "x".repeat(200);
        let texts = ["", "espresso", long.as_str(), "Ñandú 日本", "tab\tnew\nline"];
        let scores = [f32::NAN, -1.0, 0.5, 2.0, f32::INFINITY];
        let mut overlay = Overlay::new();
        for (w, h) in [(2, 2), (3, 3), (5, 7), (2, 300), (300, 2), (176, 144), (3840, 2160)] {
            for pad in [0, 3] {
                for (text, score) in texts.iter().zip(scores) {
                    let mut f = flat(w, h, pad, GREY);
                    overlay.draw(&mut f, text, score);
                    overlay.draw(&mut f, text, score);
                }
            }
        }
        // Planes shorter than the header claims: rows past the end are skipped.
        let mut f = flat(640, 360, 0, GREY);
        f.y.truncate(100);
        f.u.clear();
        overlay.draw(&mut f, "espresso", 0.5);
        // A header claiming an absurd size costs no more than an 8K frame.
        let mut f = flat(64, 64, 0, GREY);
        (f.width, f.height) = (u32::MAX, u32::MAX);
        overlay.draw(&mut f, "espresso", 0.5);
    }
}
