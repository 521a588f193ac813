//! Downscaling of I420 pictures for the annotated track (`annotated_scale`):
//! a 2×2 box average for exactly half size (the common case, one pass, every
//! source sample read once), bilinear sampling for other factors.

use super::VideoFrame;

/// The even output size for `scale` (0 < scale ≤ 1) of a `width × height` picture,
/// at least 16×16 (H.264's macroblock).
pub fn scaled_size(width: u32, height: u32, scale: f32) -> (u32, u32) {
    let dim = |d: u32| (((d as f32 * scale) as u32) & !1).clamp(16.min(d & !1), d & !1);
    (dim(width), dim(height))
}

impl VideoFrame {
    /// A copy of this picture scaled to `width × height` (even, no larger than
    /// the source), tightly packed, with the same times. `width`/`height` equal
    /// to the source's give a plain copy.
    pub fn downscaled(&self, width: u32, height: u32) -> VideoFrame {
        let (sw, sh) = (self.width as usize, self.height as usize);
        let (dw, dh) = ((width as usize).min(sw).max(2), (height as usize).min(sh).max(2));
        let (scw, sch) = (sw.div_ceil(2), sh.div_ceil(2));
        let (dcw, dch) = (dw.div_ceil(2), dh.div_ceil(2));
        let plane = |src: &[u8], stride: usize, (w, h): (usize, usize), (ow, oh): (usize, usize)| {
            if (w, h) == (ow * 2, oh * 2) { half(src, stride, ow, oh) } else { bilinear(src, stride, (w, h), (ow, oh)) }
        };
        VideoFrame {
            width: dw as u32,
            height: dh as u32,
            y: plane(&self.y, self.y_stride, (sw, sh), (dw, dh)),
            u: plane(&self.u, self.uv_stride, (scw, sch), (dcw, dch)),
            v: plane(&self.v, self.uv_stride, (scw, sch), (dcw, dch)),
            y_stride: dw,
            uv_stride: dcw,
            pts_90k: self.pts_90k,
            received_at: self.received_at,
            captured_at: self.captured_at,
        }
    }
}

/// Each output sample is the rounded mean of its 2×2 source block.
fn half(src: &[u8], stride: usize, ow: usize, oh: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(ow * oh);
    for y in 0..oh {
        let (r0, r1) = (&src[2 * y * stride..][..2 * ow], &src[(2 * y + 1) * stride..][..2 * ow]);
        out.extend(
            r0.chunks_exact(2)
                .zip(r1.chunks_exact(2))
                .map(|(a, b)| ((u16::from(a[0]) + u16::from(a[1]) + u16::from(b[0]) + u16::from(b[1]) + 2) >> 2) as u8),
        );
    }
    out
}

/// Bilinear sampling at pixel centres, 8-bit fixed-point weights.
fn bilinear(src: &[u8], stride: usize, (w, h): (usize, usize), (ow, oh): (usize, usize)) -> Vec<u8> {
    // Source position of each output column/row: (index, weight of the next one ×256).
    let taps = |n: usize, on: usize| -> Vec<(usize, u32)> {
        (0..on)
            .map(|o| {
                let pos = ((o as f32 + 0.5) * n as f32 / on as f32 - 0.5).clamp(0.0, (n - 1) as f32);
                let i = (pos as usize).min(n.saturating_sub(2));
                (i, ((pos - i as f32) * 256.0).round().min(256.0) as u32)
            })
            .collect()
    };
    let (xs, ys) = (taps(w, ow), taps(h, oh));
    let mut out = Vec::with_capacity(ow * oh);
    for &(y, fy) in &ys {
        let r0 = &src[y * stride..][..w];
        let r1 = &src[(y + 1).min(h - 1) * stride..][..w];
        out.extend(xs.iter().map(|&(x, fx)| {
            let x1 = (x + 1).min(w - 1);
            let top = u32::from(r0[x]) * (256 - fx) + u32::from(r0[x1]) * fx;
            let bottom = u32::from(r1[x]) * (256 - fx) + u32::from(r1[x1]) * fx;
            ((top * (256 - fy) + bottom * fy + (1 << 15)) >> 16) as u8
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> VideoFrame {
        let rgb: Vec<u8> =
            (0..h).flat_map(|y| (0..w).flat_map(move |x| [(x * 255 / w) as u8, (y * 255 / h) as u8, 90])).collect();
        VideoFrame::from_rgb(w, h, &rgb)
    }

    #[test]
    fn half_size_averages_blocks_and_keeps_times() {
        let f = gradient(64, 48);
        let h = f.downscaled(32, 24);
        assert_eq!((h.width, h.height, h.y.len(), h.u.len(), h.y_stride, h.uv_stride), (32, 24, 768, 192, 32, 16));
        let expect = (u16::from(f.y[0]) + u16::from(f.y[1]) + u16::from(f.y[64]) + u16::from(f.y[65]) + 2) / 4;
        assert_eq!(u16::from(h.y[0]), expect);
        assert_eq!((h.pts_90k, h.captured_at), (f.pts_90k, f.captured_at));
    }

    #[test]
    fn other_factors_keep_a_smooth_gradient() {
        let f = gradient(1280, 720);
        for (w, h) in [(960, 540), (426, 240), (1280, 720)] {
            let s = f.downscaled(w, h);
            assert_eq!((s.width, s.height, s.y.len()), (w, h, (w * h) as usize));
            // Left-to-right luma rises across the picture as in the source.
            let row = &s.y[(h as usize / 2) * w as usize..][..w as usize];
            assert!(row.windows(2).all(|p| p[1] + 2 >= p[0]), "{w}x{h}");
            assert!(row[w as usize - 1] > row[0] + 50, "luma rises by 0.257 × 255 across");
        }
    }

    #[test]
    fn sizes_are_even_and_at_least_a_macroblock() {
        assert_eq!(scaled_size(1280, 720, 0.5), (640, 360));
        assert_eq!(scaled_size(1920, 1080, 0.333), (638, 358));
        assert_eq!(scaled_size(100, 60, 0.01), (16, 16));
        assert_eq!(scaled_size(1279, 719, 1.0), (1278, 718));
    }
}
