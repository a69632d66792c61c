//! framewise's op `ai.framewise:PixelConvI16`: a style model's first convolution (reflect Pad
//! and Conv) straight from the uint8 NHWC frame, with 16-bit integer weights, on the CPU. On a 2-core
//! CPU that convolution (9x9 on 3 channels into 32, at full resolution) was a quarter of the
//! model's time although ONNX Runtime's fp32 kernel ran it near the cores' peak, and ONNX
//! Runtime's own int8 convolutions (ConvInteger, QLinearConv) were slower than fp32 on this
//! model (BENCHMARKS.md). Pixels are whole numbers, so only the weights are rounded, per output
//! channel to 16 bits (8 bits gave 27 dB on a smooth gradient, whose normalisation amplifies
//! any error); the sums are exact integers, from AVX-512 VNNI (`vpdpwssd`, 32 products per
//! instruction against fp32's 16) where the CPU has it, else a portable loop that gives the
//! same sums. The graph rewrite is `optimize::pixels_int_conv`.
//!
//! Inputs: X uint8 [N, H, W, C] (the model's image), W int16 [M, C, K, K], scale and shift f32
//! [M], pads int64 (ONNX Pad's, reflect, H and W only). All but X are constants.
//! Output: Y f32 [N, M, H', W'], H' = H + top + bottom - K + 1 (W' alike), NCHW:
//! Y[n, m, y, x] = scale[m] * sum(W[m, c, i, j] * Xpad[n, y + i, x + j, c]) + shift[m].

use crate::cpu_op::{constant, four_dims, kernel, padded_out, square_weights, CpuConv};
use crate::norm_op::{read_pads, reflect, Pads};
use crate::op_threads::Out;
use ort::operator::{
    BoxedKernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
};
use ort::value::TensorElementType;
use std::ops::Range;

/// The op's name.
pub const OP: &str = "PixelConvI16";

/// Adds the op (CPU only) to framewise's domain.
pub(crate) fn add_to(d: ort::operator::OperatorDomain) -> ort::Result<OperatorDomain> {
    d.add(OnCpu)
}

/// Output pixels per vector: a 512-bit register of i32 sums.
const LANES: usize = 16;
/// Values read past a row's last output pixel by the vector path's 32-value window loads.
const ROW_SLACK: usize = 32 + LANES;

/// The convolution, its weights packed for the kernel once, when the session is made.
#[derive(Clone, Debug)]
pub struct PixelConv {
    /// Output channels, input channels, kernel side.
    m: usize,
    c: usize,
    k: usize,
    pads: Pads,
    /// The weights as given, [M, C, K, K] (the portable loop).
    w: Vec<i16>,
    /// The weights in pairs of taps along a row, as i32 words: [C][K][pairs][M rounded up to
    /// 16], a tap past K zero (the vector path broadcasts one word per output channel).
    packed: Vec<i32>,
    scale: Vec<f32>,
    shift: Vec<f32>,
}

impl PixelConv {
    /// Checks the shapes: `dims` are W's ([M, C, K, K]).
    pub fn new(
        w: &[i16],
        dims: &[i64],
        scale: &[f32],
        shift: &[f32],
        pads: Pads,
    ) -> Result<Self, String> {
        let [m, c, k] = square_weights(dims, w.len())?;
        if scale.len() != m || shift.len() != m {
            return Err(format!(
                "scale and shift have {} and {} values; W has {m} output channels",
                scale.len(),
                shift.len()
            ));
        }
        // Pixels up to 255: every sum must fit an i32 (quantize_weights keeps it so).
        for (o, ch) in w.chunks(c * k * k).enumerate() {
            let top: i64 = ch.iter().map(|&v| (v as i64).abs()).sum::<i64>() * 255;
            if top > i32::MAX as i64 {
                return Err(format!(
                    "weights W of output channel {o} could sum to {top} (more than an i32 holds)"
                ));
            }
        }
        let pairs = k.div_ceil(2);
        let mp = m.next_multiple_of(LANES);
        let mut packed = vec![0i32; c * k * pairs * mp];
        for o in 0..m {
            for ci in 0..c {
                for dy in 0..k {
                    let taps = &w[((o * c + ci) * k + dy) * k..][..k];
                    for g in 0..pairs {
                        let lo = taps[2 * g] as u16 as u32;
                        let hi = taps.get(2 * g + 1).map_or(0, |&t| t as u16 as u32);
                        packed[((ci * k + dy) * pairs + g) * mp + o] = (lo | hi << 16) as i32;
                    }
                }
            }
        }
        Ok(Self {
            m,
            c,
            k,
            pads,
            w: w.to_vec(),
            packed,
            scale: scale.to_vec(),
            shift: shift.to_vec(),
        })
    }
}

impl CpuConv for PixelConv {
    type X = u8;
    type Scratch = i16;

    /// Y's shape for X's ([N, H, W, C]), checked against the weights and pads.
    fn out_shape(&self, x: &[i64]) -> Result<[usize; 4], String> {
        let [n, h, w, c] = four_dims(x, "[N, H, W, C]")?;
        let [oh, ow] = padded_out([h, w], c, self.c, self.k, self.pads)?;
        Ok([n, self.m, oh, ow])
    }

    /// Runs the convolution on X (`x_dims` [N, H, W, C]) into Y (`out_shape`). `planes` is
    /// scratch, kept between runs.
    fn run(&self, x: &[u8], x_dims: [usize; 4], y: &mut [f32], planes: &mut Vec<i16>) {
        let [n, h, w, c] = x_dims;
        let p = self.pads;
        let (ph, pw) = (h + p.top + p.bottom, w + p.left + p.right);
        let (oh, ow) = (ph - self.k + 1, pw - self.k + 1);
        let rw = pw + ROW_SLACK;
        planes.clear();
        planes.resize(c * ph * rw, 0);
        let vector = vnni_available();
        for (xi, yi) in x
            .chunks_exact(h * w * c)
            .zip(y.chunks_exact_mut(self.m * oh * ow))
            .take(n)
        {
            pad_planes(xi, [h, w, c], p, planes, rw);
            let (g, out, planes) = (Geo { ph, rw, oh, ow }, Out::new(yi), &planes[..]);
            // Bands of output rows on the session's threads, each writing only its own rows.
            crate::op_threads::bands(oh, |band| {
                if vector {
                    // SAFETY: the CPU has the features (checked above); the planes are c x ph
                    // rows of rw values and yi is [M, oh, ow], as the kernel reads and writes.
                    unsafe { self.rows_vnni(planes, g, out, band) };
                } else {
                    self.rows_portable(planes, g, out, band);
                }
            });
        }
    }
}

impl PixelConv {
    /// The sums with plain integer arithmetic (CPUs without AVX-512 VNNI, and the reference).
    fn rows_portable(&self, planes: &[i16], g: Geo, y: Out, band: Range<usize>) {
        let (k, Geo { ph, rw, oh, ow }) = (self.k, g);
        let mut acc = vec![0i32; ow];
        for o in 0..self.m {
            for r in band.clone() {
                acc.fill(0);
                for ci in 0..self.c {
                    for dy in 0..k {
                        let row = &planes[(ci * ph + r + dy) * rw..][..ow + k];
                        let taps = &self.w[((o * self.c + ci) * k + dy) * k..][..k];
                        for (dx, &t) in taps.iter().enumerate() {
                            let t = t as i32;
                            for (a, &v) in acc.iter_mut().zip(&row[dx..dx + ow]) {
                                *a += t * v as i32;
                            }
                        }
                    }
                }
                let (s, b) = (self.scale[o], self.shift[o]);
                // SAFETY: row r of channel o belongs to this band alone.
                let row = unsafe { y.row((o * oh + r) * ow, ow) };
                for (out, &a) in row.iter_mut().zip(&acc) {
                    *out = (a as f32).mul_add(s, b);
                }
            }
        }
    }

    /// The sums 16 output pixels by 16 output channels at a time: each pair of taps along a
    /// row is one 32-value load arranged by `vpermw` into 16 overlapping 2-pixel windows, then
    /// one `vpdpwssd` per output channel with that channel's 2 weights broadcast.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn rows_vnni(&self, planes: &[i16], g: Geo, y: Out, band: Range<usize>) {
        use std::arch::x86_64::*;
        let Geo { ph, rw, oh, ow } = g;
        let (k, groups) = (self.k, self.k.div_ceil(2));
        let mp = self.m.next_multiple_of(LANES);
        // Lane j, value t takes the row's value j + t: the window of 2 pixels from pixel j.
        let mut idx = [0u16; 32];
        for (i, v) in idx.iter_mut().enumerate() {
            *v = (i / 2 + i % 2) as u16;
        }
        let idx = _mm512_loadu_si512(idx.as_ptr().cast());
        // Where each (input channel, kernel row) starts, relative to the output row's pixels.
        let rows: Vec<usize> = (0..self.c)
            .flat_map(|ci| (0..k).map(move |dy| (ci * ph + dy) * rw))
            .collect();
        assert!(planes.len() >= self.c * ph * rw && y.len() >= self.m * oh * ow);
        assert!(self.packed.len() >= rows.len() * groups * mp);
        let (pp, wp0) = (planes.as_ptr(), self.packed.as_ptr());
        for r in band {
            for x0 in (0..ow).step_by(LANES) {
                let mask: __mmask16 = if ow - x0 >= LANES {
                    0xffff
                } else {
                    (1u16 << (ow - x0)) - 1
                };
                let base = r * rw + x0;
                for ob in (0..self.m).step_by(LANES) {
                    // Sixteen named sums: as an array, LLVM kept them in memory and stored
                    // each after every instruction (twice as slow, seen in the disassembly).
                    let z = _mm512_setzero_si512();
                    let [mut a0, mut a1, mut a2, mut a3, mut a4, mut a5, mut a6, mut a7] = [z; 8];
                    let [mut a8, mut a9, mut a10, mut a11, mut a12, mut a13, mut a14, mut a15] =
                        [z; 8];
                    let mut wp = wp0.add(ob);
                    for &off in &rows {
                        // SAFETY (reads): rows of rw values with ROW_SLACK past the last
                        // output pixel, so every 32-value load is inside the planes.
                        let rp = pp.add(off + base);
                        for g in 0..groups {
                            let v = _mm512_loadu_si512(rp.add(2 * g).cast());
                            let win = _mm512_permutexvar_epi16(idx, v);
                            macro_rules! dp {
                                ($($a:ident $o:literal),*) => {$(
                                    $a = _mm512_dpwssd_epi32($a, win, _mm512_set1_epi32(*wp.add($o)));
                                )*};
                            }
                            dp!(a0 0, a1 1, a2 2, a3 3, a4 4, a5 5, a6 6, a7 7);
                            dp!(a8 8, a9 9, a10 10, a11 11, a12 12, a13 13, a14 14, a15 15);
                            wp = wp.add(mp);
                        }
                    }
                    let acc = [
                        a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15,
                    ];
                    for (o, a) in acc.iter().enumerate() {
                        let o = ob + o;
                        if o >= self.m {
                            break;
                        }
                        let f = _mm512_fmadd_ps(
                            _mm512_cvtepi32_ps(*a),
                            _mm512_set1_ps(self.scale[o]),
                            _mm512_set1_ps(self.shift[o]),
                        );
                        // Row r of channel o: this band's alone.
                        _mm512_mask_storeu_ps(y.ptr().add((o * oh + r) * ow + x0), mask, f);
                    }
                }
            }
        }
    }
}

/// Sizes of one run: padded planes' rows and row length, output rows and columns.
#[derive(Clone, Copy)]
struct Geo {
    ph: usize,
    rw: usize,
    oh: usize,
    ow: usize,
}

/// Whether this CPU runs the vector path.
pub fn vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One frame [H, W, C] reflect-padded into C planes of 16-bit values, rows `rw` long (the slack
/// past each row zero).
fn pad_planes(x: &[u8], [h, w, c]: [usize; 3], p: Pads, planes: &mut [i16], rw: usize) {
    let (ph, pw) = (h + p.top + p.bottom, w + p.left + p.right);
    let cols: Vec<usize> = (0..pw)
        .map(|col| reflect(col as i64 - p.left as i64, w))
        .collect();
    for r in 0..ph {
        let src = &x[reflect(r as i64 - p.top as i64, h) * w * c..][..w * c];
        for ci in 0..c {
            let row = &mut planes[(ci * ph + r) * rw..][..pw];
            for (out, &sc) in row.iter_mut().zip(&cols) {
                *out = src[sc * c + ci] as i16;
            }
        }
    }
}

/// Rounds float weights [M, ...] to 16-bit integers per output channel (symmetric: the
/// largest magnitude to 32767, or less where a sum over pixels of 255 could pass an i32): the
/// integer weights and each channel's step.
pub fn quantize_weights(w: &[f32], m: usize) -> (Vec<i16>, Vec<f32>) {
    let per = w.len() / m.max(1);
    let mut q = Vec::with_capacity(w.len());
    let mut steps = Vec::with_capacity(m);
    for ch in w.chunks(per.max(1)).take(m) {
        let top = ch.iter().fold(0f64, |a, &v| a.max((v as f64).abs()));
        let sum = ch.iter().map(|&v| (v as f64).abs()).sum::<f64>();
        // Rounding adds at most half a step per weight to the sum of magnitudes.
        let step = if top > 0.0 {
            (top / 32767.0).max((sum + 0.5 * ch.len() as f64) * 255.0 / 2.0e9)
        } else {
            1.0
        };
        q.extend(
            ch.iter()
                .map(|&v| (v as f64 / step).round().clamp(-32767.0, 32767.0) as i16),
        );
        steps.push(step as f32);
    }
    (q, steps)
}

struct OnCpu;

impl Operator for OnCpu {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        OP
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [
            OperatorInput::required(TensorElementType::Uint8),
            OperatorInput::required(TensorElementType::Int16),
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Int64),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, k: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let pads = read_pads(k, 4, OP)?;
        let (dims, w) = constant::<i16>(k, OP, 1, "weights W")?;
        let (_, scale) = constant::<f32>(k, OP, 2, "scale")?;
        let (_, shift) = constant::<f32>(k, OP, 3, "shift")?;
        let conv = PixelConv::new(&w, &dims, &scale, &shift, pads)
            .map_err(|e| ort::Error::new(format!("{OP}: {e}")))?;
        Ok(kernel(OP, conv))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The convolution in f64 from the definition.
    fn reference(x: &[u8], [n, h, w, c]: [usize; 4], cv: &PixelConv) -> Vec<f32> {
        let (wq, m, k, p) = (&cv.w, cv.m, cv.k, cv.pads);
        let (scale, shift) = (&cv.scale, &cv.shift);
        let (oh, ow) = (h + p.top + p.bottom - k + 1, w + p.left + p.right - k + 1);
        let mut y = vec![0f32; n * m * oh * ow];
        for i in 0..n {
            for o in 0..m {
                for r in 0..oh {
                    for col in 0..ow {
                        let mut s = 0i64;
                        for ci in 0..c {
                            for dy in 0..k {
                                for dx in 0..k {
                                    let sr = reflect((r + dy) as i64 - p.top as i64, h);
                                    let sc = reflect((col + dx) as i64 - p.left as i64, w);
                                    let v = x[((i * h + sr) * w + sc) * c + ci] as i64;
                                    s += v * wq[((o * c + ci) * k + dy) * k + dx] as i64;
                                }
                            }
                        }
                        y[((i * m + o) * oh + r) * ow + col] =
                            (s as f32).mul_add(scale[o], shift[o]);
                    }
                }
            }
        }
        y
    }

    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    #[test]
    fn both_paths_give_the_exact_sums_at_odd_sizes() {
        let mut seed = 7u64;
        // (N, H, W, C, M, K, pads): the style model's 9x9 on 3 into 32, then odd shapes that
        // leave partial vectors of pixels and of output channels.
        for (n, h, w, c, m, k, pad) in [
            (1, 13, 37, 3, 32, 9, 4),
            (2, 9, 17, 3, 5, 3, 1),
            (1, 6, 5, 2, 19, 5, 2),
            (1, 8, 40, 1, 16, 1, 0),
        ] {
            let p = Pads {
                top: pad,
                left: pad,
                bottom: pad,
                right: pad,
            };
            let x: Vec<u8> = (0..n * h * w * c).map(|_| lcg(&mut seed) as u8).collect();
            // Extremes included: 255 x -32767 and 255 x 32767 in every sum.
            let mut wq: Vec<i16> = (0..m * c * k * k)
                .map(|_| (lcg(&mut seed) % 65535) as i32 - 32767)
                .map(|v| v as i16)
                .collect();
            wq[0] = -32767;
            let second = 1 % wq.len();
            wq[second] = 32767;
            let scale: Vec<f32> = (0..m).map(|o| 1.0 / (1 + o) as f32).collect();
            let shift: Vec<f32> = (0..m).map(|o| o as f32 - 3.0).collect();
            let conv = PixelConv::new(
                &wq,
                &[m as i64, c as i64, k as i64, k as i64],
                &scale,
                &shift,
                p,
            )
            .unwrap();
            let shape = conv
                .out_shape(&[n as i64, h as i64, w as i64, c as i64])
                .unwrap();
            let want = reference(&x, [n, h, w, c], &conv);
            assert_eq!(shape.iter().product::<usize>(), want.len());
            let mut planes = Vec::new();
            let mut y = vec![f32::NAN; want.len()];
            conv.run(&x, [n, h, w, c], &mut y, &mut planes);
            assert_eq!(y, want, "{n}x{h}x{w}x{c} into {m}, {k}x{k}");
            // Bands of rows on three threads: the same sums.
            crate::op_threads::set(3);
            let mut y3 = vec![f32::NAN; want.len()];
            conv.run(&x, [n, h, w, c], &mut y3, &mut planes);
            crate::op_threads::set(1);
            assert_eq!(y3, want, "three threads");
            if vnni_available() {
                let ph = h + 2 * pad;
                let rw = w + 2 * pad + ROW_SLACK;
                let (oh, ow) = (shape[2], shape[3]);
                let mut yp = vec![f32::NAN; m * oh * ow];
                pad_planes(&x[..h * w * c], [h, w, c], p, &mut planes, rw);
                let g = Geo { ph, rw, oh, ow };
                conv.rows_portable(&planes, g, Out::new(&mut yp), 0..oh);
                assert_eq!(yp, want[..m * oh * ow], "portable loop");
            }
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused_by_name() {
        let p = Pads {
            top: 4,
            left: 4,
            bottom: 4,
            right: 4,
        };
        let w = vec![1i16; 2 * 3 * 9 * 9];
        let e = PixelConv::new(&w, &[2, 3, 9], &[1.0; 2], &[0.0; 2], p).unwrap_err();
        assert!(e.contains("[M, C, K, K]"), "{e}");
        let e = PixelConv::new(&w, &[2, 3, 9, 9], &[1.0; 3], &[0.0; 2], p).unwrap_err();
        assert!(e.contains("scale and shift"), "{e}");
        let conv = PixelConv::new(&w, &[2, 3, 9, 9], &[1.0; 2], &[0.0; 2], p).unwrap();
        assert!(conv
            .out_shape(&[1, 8, 8, 4])
            .unwrap_err()
            .contains("4 channels"));
        assert!(conv
            .out_shape(&[1, 4, 8, 3])
            .unwrap_err()
            .contains("reflect beyond"));
        assert!(conv
            .out_shape(&[1, 8, 8])
            .unwrap_err()
            .contains("[N, H, W, C]"));
        assert_eq!(conv.out_shape(&[2, 8, 10, 3]).unwrap(), [2, 2, 8, 10]);
    }

    #[test]
    fn weights_round_per_channel_to_their_largest_and_sums_fit_an_i32() {
        let w = [0.5, -0.25, 0.0, 1e-5, 0.0, 0.0, 0.0, 0.0];
        let (q, steps) = quantize_weights(&w, 2);
        assert_eq!(q[..4], [32767, -16384, 0, 1]);
        assert_eq!(q[4..], [0, 0, 0, 0]);
        assert!((steps[0] - 0.5 / 32767.0).abs() < 1e-9);
        assert_eq!(steps[1], 1.0);
        // 243 taps all at the largest magnitude: the step grows so 255 x the sum fits.
        let flat = vec![1.0f32; 2 * 243];
        let (q, _) = quantize_weights(&flat, 2);
        let sum: i64 = q[..243].iter().map(|&v| v as i64).sum();
        assert!(sum * 255 <= i32::MAX as i64, "{sum}");
        assert!(PixelConv::new(&q, &[2, 3, 9, 9], &[1.0; 2], &[0.0; 2], Pads::uniform(4)).is_ok());
        let e = PixelConv::new(
            &vec![32767i16; 2 * 3 * 81 * 2][..2 * 486],
            &[2, 6, 9, 9],
            &[1.0; 2],
            &[0.0; 2],
            Pads::uniform(4),
        )
        .unwrap_err();
        assert!(e.contains("more than an i32 holds"), "{e}");
    }
}
