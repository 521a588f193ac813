//! Preprocessing: an RGB image or an I420 frame straight to the model's input tensor.
//!
//! The model input is `[3,224,224]` f32 per image (NCHW without the batch axis), RGB,
//! normalised `(x − 127) / 128`, the whole picture resized to 224×224 with an
//! antialiased bilinear (triangle) filter — the same filter as PIL's `BILINEAR`,
//! which the model's calibration used. I420 frames are resampled plane by plane and
//! converted to RGB only at 224×224: no full-resolution RGB image is ever built.

use crate::media::{I420View, yuv_to_rgb};

/// Side of the square model input, in pixels.
pub const INPUT_SIDE: usize = 224;
/// Number of f32 values in one image's input tensor: `3 × 224 × 224`.
pub const INPUT_LEN: usize = 3 * INPUT_SIDE * INPUT_SIDE;
const PLANE: usize = INPUT_SIDE * INPUT_SIDE;

/// Filter taps along one axis: for output index `o`, source indices
/// `start[o] .. start[o] + len[o]` weighted by `weights[o * max_len ..]`.
#[derive(Debug)]
struct Taps {
    src_len: usize,
    start: Vec<usize>,
    len: Vec<usize>,
    max_len: usize,
    weights: Vec<f32>,
}

impl Taps {
    /// Taps resizing `src_len` samples to `dst_len`: an area (box) average when
    /// shrinking by 2× or more — every source pixel counts once, weighted by how
    /// much of it falls inside the output pixel — else PIL's bilinear
    /// (`precompute_coeffs`, support 1 scaled by the reduction).
    fn new(src_len: usize, dst_len: usize) -> Taps {
        let scale = src_len as f64 / dst_len as f64;
        let max_len = if scale >= 2.0 { scale.ceil() as usize + 1 } else { scale.max(1.0).ceil() as usize * 2 + 1 };
        let mut t = Taps {
            src_len,
            start: Vec::with_capacity(dst_len),
            len: Vec::with_capacity(dst_len),
            max_len,
            weights: vec![0.0; dst_len * max_len],
        };
        for o in 0..dst_len {
            let w = &mut t.weights[o * max_len..][..max_len];
            let (lo, hi) = if scale >= 2.0 { area(o, scale, src_len, w) } else { bilinear(o, scale, src_len, w) };
            let total: f64 = w[..hi - lo].iter().map(|&x| f64::from(x)).sum();
            if total > 0.0 {
                w.iter_mut().for_each(|wk| *wk = (f64::from(*wk) / total) as f32);
            }
            t.start.push(lo);
            t.len.push(hi - lo);
        }
        t
    }

    fn get(&self, o: usize) -> (usize, &[f32]) {
        (self.start[o], &self.weights[o * self.max_len..][..self.len[o]])
    }
}

/// Area weights of output `o`: overlap of source pixel `[x, x+1)` with `[o·scale, (o+1)·scale)`.
fn area(o: usize, scale: f64, src_len: usize, w: &mut [f32]) -> (usize, usize) {
    let (begin, end) = (o as f64 * scale, (o as f64 + 1.0) * scale);
    let lo = begin.floor() as usize;
    let hi = (end.ceil() as usize).min(src_len);
    for (k, x) in (lo..hi).enumerate() {
        let overlap = (end.min(x as f64 + 1.0) - begin.max(x as f64)).max(0.0);
        w[k] = overlap as f32;
    }
    (lo, hi)
}

/// PIL's bilinear weights of output `o` (unnormalised).
fn bilinear(o: usize, scale: f64, src_len: usize, w: &mut [f32]) -> (usize, usize) {
    let filter_scale = scale.max(1.0);
    let center = (o as f64 + 0.5) * scale;
    let lo = ((center - filter_scale + 0.5) as isize).max(0) as usize;
    let hi = ((center + filter_scale + 0.5) as usize).min(src_len);
    for (k, x) in (lo..hi).enumerate() {
        let d = ((x as f64 - center + 0.5) / filter_scale).abs();
        w[k] = if d < 1.0 { (1.0 - d) as f32 } else { 0.0 };
    }
    (lo, hi)
}

/// Reusable preprocessing state: cached filter taps per source size and scratch
/// buffers, so steady-state preprocessing allocates nothing.
///
/// One per thread (e.g. per camera); cheap to create.
#[derive(Debug, Default)]
pub struct Preprocessor {
    taps: Vec<Taps>,
    rows: Vec<f32>,
    yuv: Vec<f32>,
}

impl Preprocessor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fills `out` (`[3,224,224]` f32, RGB, `(x − 127) / 128`) from packed 8-bit RGB
    /// (`stride ≥ width × 3` bytes per row).
    ///
    /// Panics if `out.len() != INPUT_LEN`, the size is zero, or `rgb` is shorter than
    /// the rows it claims: caller bugs, since images are validated when loaded.
    pub fn rgb_to_tensor(&mut self, rgb: &[u8], width: usize, height: usize, stride: usize, out: &mut [f32]) {
        assert_eq!(out.len(), INPUT_LEN);
        let (r, gb) = out.split_at_mut(PLANE);
        let (g, b) = gb.split_at_mut(PLANE);
        self.resample(rgb, width, height, stride, 3, &mut [r, g, b]);
        out.iter_mut().for_each(|x| *x = (x.clamp(0.0, 255.0) - 127.0) / 128.0);
    }

    /// Fills `out` (`[3,224,224]` f32, RGB, `(x − 127) / 128`) from an I420 frame:
    /// Y, U and V are each resampled to 224×224, then converted with BT.601
    /// limited range.
    ///
    /// Panics if `out.len() != INPUT_LEN` or the planes are shorter than their
    /// strides and sizes claim (a decoder bug).
    pub fn i420_to_tensor(&mut self, frame: &I420View<'_>, out: &mut [f32]) {
        assert_eq!(out.len(), INPUT_LEN);
        let (w, h) = (frame.width as usize, frame.height as usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let mut yuv = std::mem::take(&mut self.yuv);
        yuv.resize(3 * PLANE, 0.0);
        {
            let (py, puv) = yuv.split_at_mut(PLANE);
            let (pu, pv) = puv.split_at_mut(PLANE);
            self.resample(frame.y, w, h, frame.y_stride, 1, &mut [py]);
            self.resample(frame.u, cw, ch, frame.uv_stride, 1, &mut [pu]);
            self.resample(frame.v, cw, ch, frame.uv_stride, 1, &mut [pv]);
        }
        let (r, gb) = out.split_at_mut(PLANE);
        let (g, b) = gb.split_at_mut(PLANE);
        for i in 0..PLANE {
            let [rr, gg, bb] = yuv_to_rgb(yuv[i], yuv[PLANE + i], yuv[2 * PLANE + i]);
            r[i] = (rr - 127.0) / 128.0;
            g[i] = (gg - 127.0) / 128.0;
            b[i] = (bb - 127.0) / 128.0;
        }
        self.yuv = yuv;
    }

    fn taps_index(&mut self, src_len: usize) -> usize {
        if let Some(i) = self.taps.iter().position(|t| t.src_len == src_len) {
            return i;
        }
        self.taps.push(Taps::new(src_len, INPUT_SIDE));
        self.taps.len() - 1
    }

    /// Separable resample of an interleaved 8-bit image with `channels` samples per
    /// pixel to 224×224, one f32 plane per channel. Vertical pass first, over whole
    /// rows (contiguous, vectorises), then horizontal on the 224 remaining rows.
    fn resample(
        &mut self,
        src: &[u8],
        width: usize,
        height: usize,
        stride: usize,
        channels: usize,
        out: &mut [&mut [f32]],
    ) {
        assert!(width > 0 && height > 0, "empty picture");
        let row_len = width * channels;
        assert!(src.len() >= (height - 1) * stride + row_len, "plane shorter than its size");
        let vi = self.taps_index(height);
        let hi = self.taps_index(width);
        let mut rows = std::mem::take(&mut self.rows);
        rows.resize(INPUT_SIDE * row_len, 0.0);
        let job = Job { src, stride, row_len, channels, vertical: &self.taps[vi], horizontal: &self.taps[hi] };
        passes(&job, &mut rows, out);
        self.rows = rows;
    }
}

/// One resampling job: an 8-bit image (`channels` interleaved samples per pixel,
/// rows `stride` bytes apart, `row_len` = width × channels) and its filter taps.
struct Job<'a> {
    src: &'a [u8],
    stride: usize,
    row_len: usize,
    channels: usize,
    vertical: &'a Taps,
    horizontal: &'a Taps,
}

/// Both passes; on x86-64 CPUs with AVX2 and FMA (detected once at run time)
/// the same code is compiled for 8-wide vectors, about twice as fast.
fn passes(job: &Job<'_>, rows: &mut [f32], out: &mut [&mut [f32]]) {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2_FMA: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *AVX2_FMA.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            #[allow(unsafe_code)]
            // SAFETY: the CPU supports AVX2 and FMA (checked just above), the only
            // requirement of a `#[target_feature]` function.
            unsafe {
                passes_avx2_fma(job, rows, out)
            };
            return;
        }
    }
    passes_generic(job, rows, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn passes_avx2_fma(job: &Job<'_>, rows: &mut [f32], out: &mut [&mut [f32]]) {
    passes_generic(job, rows, out);
}

/// Vertical pass over whole rows (contiguous, vectorises), then horizontal.
#[inline(always)]
fn passes_generic(job: &Job<'_>, rows: &mut [f32], out: &mut [&mut [f32]]) {
    let &Job { src, stride, row_len, channels, vertical: vt, horizontal: ht } = job;
    for (oy, acc) in rows.chunks_exact_mut(row_len).enumerate() {
        let (y0, weights) = vt.get(oy);
        let line = |k: usize| &src[(y0 + k) * stride..][..row_len];
        acc.fill(0.0); // per row, while it is hot in L1
        let mut k = 0;
        // Four source rows per sweep: fewer passes over the accumulator row.
        while k + 4 <= weights.len() {
            let (w0, w1, w2, w3) = (weights[k], weights[k + 1], weights[k + 2], weights[k + 3]);
            let rows4 = line(k).iter().zip(line(k + 1)).zip(line(k + 2)).zip(line(k + 3));
            for (a, (((&s0, &s1), &s2), &s3)) in acc.iter_mut().zip(rows4) {
                *a += w0 * f32::from(s0) + w1 * f32::from(s1) + w2 * f32::from(s2) + w3 * f32::from(s3);
            }
            k += 4;
        }
        for (k, &wk) in weights.iter().enumerate().skip(k) {
            for (a, &s) in acc.iter_mut().zip(line(k)) {
                *a += wk * f32::from(s);
            }
        }
    }
    match channels {
        1 => horizontal::<1>(rows, row_len, ht, out),
        3 => horizontal::<3>(rows, row_len, ht, out),
        _ => unreachable!("only planes (1) and packed RGB (3) are resampled"),
    }
}

/// Horizontal pass: each of the 224 accumulated rows (`C` interleaved channels)
/// to 224 samples per channel plane. `C` is a constant so indexing compiles to
/// plain strided loads.
#[inline(always)]
fn horizontal<const C: usize>(rows: &[f32], row_len: usize, taps: &Taps, out: &mut [&mut [f32]]) {
    for (oy, row) in rows.chunks_exact(row_len).enumerate() {
        for ox in 0..INPUT_SIDE {
            let (x0, weights) = taps.get(ox);
            let span = &row[x0 * C..(x0 + weights.len()) * C];
            let mut sums = [0.0f32; C];
            for (w, px) in weights.iter().zip(span.chunks_exact(C)) {
                for c in 0..C {
                    sums[c] += w * px[c];
                }
            }
            for c in 0..C {
                out[c][oy * INPUT_SIDE + ox] = sums[c];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::VideoFrame;

    #[test]
    fn taps_are_normalised_and_cover_the_source() {
        for (src, dst) in [(1, 224), (224, 224), (640, 224), (1080, 224), (4000, 224)] {
            let t = Taps::new(src, dst);
            for o in 0..dst {
                let (start, w) = t.get(o);
                assert!(start + w.len() <= src);
                let sum: f32 = w.iter().sum();
                assert!((sum - 1.0).abs() < 1e-4, "{src}->{dst} at {o}: {sum}");
            }
        }
    }

    #[test]
    fn flat_rgb_gives_flat_normalised_tensor() {
        let rgb: Vec<u8> = [255u8, 127, 0].iter().copied().cycle().take(37 * 11 * 3).collect();
        let mut out = vec![0.0; INPUT_LEN];
        Preprocessor::new().rgb_to_tensor(&rgb, 37, 11, 37 * 3, &mut out);
        assert!(out[..PLANE].iter().all(|&x| (x - 1.0).abs() < 1e-4));
        assert!(out[PLANE..2 * PLANE].iter().all(|&x| x.abs() < 1e-4));
        assert!(out[2 * PLANE..].iter().all(|&x| (x + 127.0 / 128.0).abs() < 1e-4));
    }

    #[test]
    fn i420_and_rgb_agree_on_a_gradient() {
        let (w, h) = (320usize, 180usize);
        let mut rgb = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                rgb.extend([(x * 255 / w) as u8, (y * 255 / h) as u8, 100]);
            }
        }
        let frame = VideoFrame::from_rgb(w as u32, h as u32, &rgb);
        let mut p = Preprocessor::new();
        let (mut a, mut b) = (vec![0.0; INPUT_LEN], vec![0.0; INPUT_LEN]);
        p.rgb_to_tensor(&rgb, w, h, w * 3, &mut a);
        p.i420_to_tensor(&frame.view(), &mut b);
        let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        // 4:2:0 subsampling of a smooth gradient plus 8-bit YUV rounding: a few levels.
        assert!(max < 4.0 / 128.0, "max difference {max}");
    }

    #[test]
    fn one_pixel_and_odd_strides_work() {
        let mut out = vec![0.0; INPUT_LEN];
        let mut p = Preprocessor::new();
        p.rgb_to_tensor(&[10, 20, 30, 99], 1, 1, 4, &mut out);
        assert!((out[0] - (10.0 - 127.0) / 128.0).abs() < 1e-5);
        let frame = VideoFrame::from_rgb(1, 1, &[10, 20, 30]);
        p.i420_to_tensor(&frame.view(), &mut out);
        assert!((out[0] - (10.0 - 127.0) / 128.0).abs() < 4.0 / 128.0);
    }
}
