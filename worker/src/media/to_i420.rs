//! Stylized RGB frames to I420 for x264, in integer arithmetic on the thread that hands them to
//! the encoder. GStreamer's `videoconvert` has no fast path from RGB: its generic one took about
//! 3 ms per 720p frame and 17–22 % of a GPU node's CPU, next to x264's 50–67 % (perf, BENCHMARKS.md
//! session 17), and x264 is what a GPU node waits for.
//!
//! The conversion is the one GStreamer would make for the same caps: the matrix and range of
//! I420's default colorimetry at that size (bt709 for HD, bt601 below, limited range), and its
//! chroma siting (`mpeg2` for HD: with each pair's left pixel, filtered 1, 2, 1 across as
//! `videoconvert` does; `jpeg` below: each 2x2 block's mean, as `pixels_op::rgb_to_nv12`, the
//! reference).

use crate::pixels_op::Yuv;

/// Fixed-point bits of the coefficients.
const BITS: u32 = 14;

/// RGB → Y'CbCr coefficients in fixed point, from a Y'CbCr → RGB conversion.
#[derive(Clone, Copy, Debug)]
pub struct ToI420 {
    /// Rows Y, Cb, Cr of the forward matrix, scaled by 2^BITS.
    k: [[i32; 3]; 3],
    /// The offsets (16, 128, 128 in limited range), scaled by 2^BITS, with half a unit for
    /// rounding: for luma at BITS, for chroma at BITS + `sum_bits` (a weighted sum of pixels).
    off_y: i32,
    off_c: [i32; 2],
    /// Chroma sited with the left pixel of each pair (MPEG-2's siting, I420's default for HD:
    /// caps `chroma-site=mpeg2`): weights 1, 2, 1 across the pair and its left neighbour, as
    /// `videoconvert` filters. Otherwise centred in the 2x2 block (`jpeg`): its mean.
    cosited: bool,
    /// log2 of the chroma weights' sum: 2 (four pixels) or 3 (1 + 2 + 1, two rows).
    sum_bits: u32,
}

impl ToI420 {
    /// The conversion that `yuv` undoes, with the chroma sited as `cosited` says.
    pub fn new(yuv: &Yuv, cosited: bool) -> Self {
        let f = yuv.forward();
        let s = f64::from(1u32 << BITS);
        let k = [0, 1, 2].map(|r| [0, 1, 2].map(|c| (f64::from(f[3 * r + c]) * s).round() as i32));
        let half = 1i32 << (BITS - 1);
        let sum_bits = if cosited { 3 } else { 2 };
        Self {
            k,
            off_y: (yuv.off[0] as i32 * (1 << BITS)) + half,
            off_c: [1, 2]
                .map(|i| (yuv.off[i] as i32 * (1 << (BITS + sum_bits))) + (half << sum_bits)),
            cosited,
            sum_bits,
        }
    }

    /// Converts `rgb` (w x h, tightly packed, both sides even) into `out` (I420: the luma plane,
    /// then U and V at half size each; w * h * 3 / 2 bytes). Compiled for AVX2 too, taken where
    /// the CPU has it: 0.55 (0.85 cosited) against 2.5 ms per 720p frame (the baseline, SSE2, has no
    /// 32-bit vector multiply), measured on this project's 2-core EPYC.
    pub fn convert(&self, rgb: &[u8], w: usize, h: usize, out: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just now), all the function asks of it.
            return unsafe { self.convert_avx2(rgb, w, h, out) };
        }
        self.convert_any(rgb, w, h, out)
    }

    /// `convert_any` compiled with AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn convert_avx2(&self, rgb: &[u8], w: usize, h: usize, out: &mut [u8]) {
        self.convert_any(rgb, w, h, out)
    }

    /// The conversion, inlined into each caller so it is compiled for that caller's features.
    #[inline(always)]
    fn convert_any(&self, rgb: &[u8], w: usize, h: usize, out: &mut [u8]) {
        assert!(
            w.is_multiple_of(2) && h.is_multiple_of(2),
            "I420 needs even sides, got {w}x{h}"
        );
        assert!(rgb.len() >= w * h * 3 && out.len() >= w * h * 3 / 2);
        let (luma, chroma) = out.split_at_mut(w * h);
        let (us, vs) = chroma.split_at_mut(w * h / 4);
        let [ky, ku, kv] = self.k;
        let y_of = |p: &[u8]| -> u8 {
            let v = ky[0] * i32::from(p[0]) + ky[1] * i32::from(p[1]) + ky[2] * i32::from(p[2]);
            ((v + self.off_y) >> BITS).clamp(0, 255) as u8
        };
        let cw = w / 2;
        // A row pair's chroma sums, one per sample, red, green and blue apart.
        let (mut sr, mut sg, mut sb) = (vec![0i32; cw], vec![0i32; cw], vec![0i32; cw]);
        for pair in 0..h / 2 {
            let top = &rgb[2 * pair * w * 3..][..w * 3];
            let bottom = &rgb[(2 * pair + 1) * w * 3..][..w * 3];
            let (ly, rest) = luma[2 * pair * w..].split_at_mut(w);
            let ly2 = &mut rest[..w];
            for (y, p) in ly.iter_mut().zip(top.chunks_exact(3)) {
                *y = y_of(p);
            }
            for (y, p) in ly2.iter_mut().zip(bottom.chunks_exact(3)) {
                *y = y_of(p);
            }
            let (ur, vr) = (&mut us[pair * cw..][..cw], &mut vs[pair * cw..][..cw]);
            // Chroma sums per sample, red, green and blue apart, in plain passes (so they
            // vectorise): the 2x2 block's four pixels; cosited, also the pixel before the pair
            // and the pair's left one again (weights 1, 2, 1 across; the first column stands in
            // for the one left of the picture).
            for (((t, b), (r, g)), bl) in top
                .chunks_exact(6)
                .zip(bottom.chunks_exact(6))
                .zip(sr.iter_mut().zip(sg.iter_mut()))
                .zip(sb.iter_mut())
            {
                *r = i32::from(t[0]) + i32::from(t[3]) + i32::from(b[0]) + i32::from(b[3]);
                *g = i32::from(t[1]) + i32::from(t[4]) + i32::from(b[1]) + i32::from(b[4]);
                *bl = i32::from(t[2]) + i32::from(t[5]) + i32::from(b[2]) + i32::from(b[5]);
            }
            if self.cosited && cw > 0 {
                sr[0] += 2 * (i32::from(top[0]) + i32::from(bottom[0]));
                sg[0] += 2 * (i32::from(top[1]) + i32::from(bottom[1]));
                sb[0] += 2 * (i32::from(top[2]) + i32::from(bottom[2]));
                for (((t, b), (r, g)), bl) in top[3..]
                    .chunks_exact(6)
                    .zip(bottom[3..].chunks_exact(6))
                    .zip(sr[1..].iter_mut().zip(sg[1..].iter_mut()))
                    .zip(sb[1..].iter_mut())
                {
                    *r += i32::from(t[0]) + i32::from(t[3]) + i32::from(b[0]) + i32::from(b[3]);
                    *g += i32::from(t[1]) + i32::from(t[4]) + i32::from(b[1]) + i32::from(b[4]);
                    *bl += i32::from(t[2]) + i32::from(t[5]) + i32::from(b[2]) + i32::from(b[5]);
                }
            }
            let shift = BITS + self.sum_bits;
            let [ou, ov] = self.off_c;
            for ((((u, v), r), g), b) in ur.iter_mut().zip(vr.iter_mut()).zip(&sr).zip(&sg).zip(&sb)
            {
                *u = ((ku[0] * r + ku[1] * g + ku[2] * b + ou) >> shift).clamp(0, 255) as u8;
                *v = ((kv[0] * r + kv[1] * g + kv[2] * b + ov) >> shift).clamp(0, 255) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pixels_op::{rgb_to_nv12, YuvMatrix};

    /// A picture with smooth gradients, edges and saturated colours.
    fn picture(w: usize, h: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                let edge = if (x / 7 + y / 5) % 2 == 0 { 255 } else { 0 };
                v.extend_from_slice(&[(x * 255 / w) as u8, (y * 255 / h) as u8, edge]);
            }
        }
        v
    }

    /// Within one level of the reference conversion (f32, rounded once), every plane.
    #[test]
    fn it_matches_the_reference_conversion() {
        let (w, h) = (62, 36);
        let rgb = picture(w, h);
        for yuv in [
            Yuv::new(YuvMatrix::Bt709, false),
            Yuv::new(YuvMatrix::Bt601, false),
            Yuv::new(YuvMatrix::Bt709, true),
        ] {
            let nv12 = rgb_to_nv12(&rgb, w, h, &yuv);
            let mut i420 = vec![0u8; w * h * 3 / 2];
            ToI420::new(&yuv, false).convert(&rgb, w, h, &mut i420);
            let (luma, chroma) = i420.split_at(w * h);
            for (a, b) in luma.iter().zip(&nv12[..w * h]) {
                assert!(a.abs_diff(*b) <= 1, "luma {a} against {b}");
            }
            let (u, v) = chroma.split_at(w * h / 4);
            for (k, uv) in nv12[w * h..].chunks_exact(2).enumerate() {
                assert!(u[k].abs_diff(uv[0]) <= 1, "U {} against {}", u[k], uv[0]);
                assert!(v[k].abs_diff(uv[1]) <= 1, "V {} against {}", v[k], uv[1]);
            }
        }
    }

    /// Nothing to convert is no fault (an empty picture, at either siting).
    #[test]
    fn an_empty_picture_converts_to_nothing() {
        let yuv = Yuv::new(YuvMatrix::Bt709, false);
        for cosited in [false, true] {
            ToI420::new(&yuv, cosited).convert(&[], 0, 2, &mut []);
            ToI420::new(&yuv, cosited).convert(&[], 2, 0, &mut []);
        }
    }

    /// Black, white and grey land on the range's ends and middle.
    #[test]
    fn greys_are_exact() {
        let yuv = Yuv::new(YuvMatrix::Bt709, false);
        let mut out = [0u8; 6];
        for (level, y, cosited) in [
            (0u8, 16u8, false),
            (255, 235, true),
            (128, 126, false),
            (128, 126, true),
        ] {
            ToI420::new(&yuv, cosited).convert(&[level; 12], 2, 2, &mut out);
            assert_eq!(out, [y, y, y, y, 128, 128], "grey {level}");
        }
    }
}
