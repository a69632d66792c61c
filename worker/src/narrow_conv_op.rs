//! framewise's op `ai.framewise:NarrowConv`: a convolution into few channels (at most 4 per
//! pass: the style model's last two, 8 into 4 and 4 into 3 at full size), with the reflect Pad
//! and a nearest 2x upsampling before it folded in, on the CPU. ONNX Runtime's CPU kernels
//! block output channels by 16, so the model's last 9x9 convolution into 3 channels ran at a
//! tenth of the cores' speed, 21 ms of a 640x360 frame (BENCHMARKS.md). Here each output
//! channel is one vector of 16 pixels and every tap one fused multiply-add (AVX-512 where the
//! CPU has it, else a portable loop with the same maths).
//!
//! Inputs: X f32 [N, C, H, W], W f32 [M, C, K, K] and B f32 [M] (constants), pads int64
//! (ONNX Pad's, reflect, H and W only, constant). Attribute `upsample` (1 or 2): X is first
//! upsampled that many times (nearest, ONNX Resize's asymmetric floor), then padded.
//! Output: Y f32 [N, M, H·u + top + bottom - K + 1, W·u + left + right - K + 1].

use crate::cpu_op::{constant, four_dims, kernel, padded_out, square_weights, CpuConv};
use crate::norm_op::{read_pads, reflect, Pads};
use crate::op_threads::Out;
use ort::operator::{
    BoxedKernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
};
use ort::value::TensorElementType;
use std::ops::Range;

/// The op's name.
pub const OP: &str = "NarrowConv";

/// Output channels one pass computes (one vector each, kept in registers).
pub const MAX_PASS: usize = 4;
/// Output pixels per vector.
const LANES: usize = 16;

/// Adds the op (CPU only) to framewise's domain.
pub(crate) fn add_to(d: OperatorDomain) -> ort::Result<OperatorDomain> {
    d.add(OnCpu)
}

/// The convolution with its weights, checked once when the session is made.
#[derive(Clone, Debug)]
pub struct NarrowConv {
    m: usize,
    c: usize,
    k: usize,
    pads: Pads,
    upsample: usize,
    /// [M, C, K, K].
    w: Vec<f32>,
    /// The weights as each pass of at most `MAX_PASS` output channels reads them.
    packed: Vec<Vec<f32>>,
    bias: Vec<f32>,
}

impl NarrowConv {
    /// `dims` are W's ([M, C, K, K]); `bias` empty for none.
    pub fn new(
        w: &[f32],
        dims: &[i64],
        bias: &[f32],
        pads: Pads,
        upsample: usize,
    ) -> Result<Self, String> {
        let [m, c, k] = square_weights(dims, w.len())?;
        if !bias.is_empty() && bias.len() != m {
            return Err(format!(
                "bias B has {} values; W has {m} output channels",
                bias.len()
            ));
        }
        if !(1..=2).contains(&upsample) {
            return Err(format!("attribute upsample is {upsample}; expected 1 or 2"));
        }
        // Each pass's weights tap by tap, its P output channels at a time: [C][K][K][P].
        let packed = (0..m)
            .step_by(MAX_PASS)
            .map(|o0| {
                let p = (m - o0).min(MAX_PASS);
                (0..c * k * k)
                    .flat_map(|t| (o0..o0 + p).map(move |o| w[o * c * k * k + t]))
                    .collect()
            })
            .collect();
        Ok(Self {
            m,
            c,
            k,
            pads,
            upsample,
            w: w.to_vec(),
            packed,
            bias: if bias.is_empty() {
                vec![0.0; m]
            } else {
                bias.to_vec()
            },
        })
    }
}

impl CpuConv for NarrowConv {
    type X = f32;
    type Scratch = f32;

    /// Y's shape for X's ([N, C, H, W]), checked (H and W after the upsampling).
    fn out_shape(&self, x: &[i64]) -> Result<[usize; 4], String> {
        let [n, c, h, w] = four_dims(x, "[N, C, H, W]")?;
        let u = self.upsample;
        let [oh, ow] = padded_out([h * u, w * u], c, self.c, self.k, self.pads)?;
        Ok([n, self.m, oh, ow])
    }

    /// Runs on X (`x_dims` [N, C, H, W]) into Y (`out_shape`); `planes` is scratch.
    fn run(&self, x: &[f32], x_dims: [usize; 4], y: &mut [f32], planes: &mut Vec<f32>) {
        let [n, c, h, w] = x_dims;
        let (u, p) = (self.upsample, self.pads);
        let (ph, pw) = (h * u + p.top + p.bottom, w * u + p.left + p.right);
        let (oh, ow) = (ph - self.k + 1, pw - self.k + 1);
        let rw = pw + LANES;
        planes.clear();
        planes.resize(c * ph * rw, 0.0);
        let cols: Vec<usize> = (0..pw)
            .map(|col| reflect(col as i64 - p.left as i64, w * u) / u)
            .collect();
        let vector = avx512_available();
        for (xi, yi) in x
            .chunks_exact(c * h * w)
            .zip(y.chunks_exact_mut(self.m * oh * ow))
            .take(n)
        {
            for ci in 0..c {
                for r in 0..ph {
                    let sr = reflect(r as i64 - p.top as i64, h * u) / u;
                    let src = &xi[(ci * h + sr) * w..][..w];
                    let row = &mut planes[(ci * ph + r) * rw..][..pw];
                    for (o, &sc) in row.iter_mut().zip(&cols) {
                        *o = src[sc];
                    }
                }
            }
            let (out, planes) = (Out::new(yi), &planes[..]);
            // Bands of output rows on the session's threads, each writing only its own rows.
            crate::op_threads::bands(oh, |band| {
                for o0 in (0..self.m).step_by(MAX_PASS) {
                    let geo = Geometry { ph, rw, oh, ow, o0 };
                    let b = band.clone();
                    match (vector, self.m - o0) {
                        // SAFETY: the CPU has AVX-512F (checked); planes are c x ph rows of rw
                        // values (LANES past the last padded pixel) and yi is [M, oh, ow].
                        (true, 1) => unsafe { self.pass_avx512::<1>(planes, out, geo, b) },
                        (true, 2) => unsafe { self.pass_avx512::<2>(planes, out, geo, b) },
                        (true, 3) => unsafe { self.pass_avx512::<3>(planes, out, geo, b) },
                        (true, _) => unsafe { self.pass_avx512::<MAX_PASS>(planes, out, geo, b) },
                        (false, left) => {
                            self.pass_portable(planes, out, geo, left.min(MAX_PASS), b)
                        }
                    }
                }
            });
        }
    }
}

impl NarrowConv {
    /// Output channels o0.. (at most `count`) with plain arithmetic, in the vector path's order
    /// (rounded apart from its fused multiply-adds: within 1e-4 of the definition in the tests).
    fn pass_portable(&self, planes: &[f32], y: Out, g: Geometry, count: usize, band: Range<usize>) {
        let (k, c) = (self.k, self.c);
        for o in g.o0..g.o0 + count {
            for r in band.clone() {
                // SAFETY: row r of channel o belongs to this band alone.
                let out = unsafe { y.row((o * g.oh + r) * g.ow, g.ow) };
                out.fill(0.0);
                for ci in 0..c {
                    for dy in 0..k {
                        let row = &planes[(ci * g.ph + r + dy) * g.rw..];
                        for dx in 0..k {
                            let t = self.w[((o * c + ci) * k + dy) * k + dx];
                            // A multiply and an add (a fused one is a libm call per value
                            // in a baseline x86-64 build).
                            for (a, &v) in out.iter_mut().zip(&row[dx..dx + g.ow]) {
                                *a += v * t;
                            }
                        }
                    }
                }
                for a in out.iter_mut() {
                    *a += self.bias[o];
                }
            }
        }
    }

    /// Output channels o0..o0 + P, 16 pixels at a time: one unaligned load per tap, then one
    /// fused multiply-add per output channel with its weight broadcast.
    #[target_feature(enable = "avx512f")]
    unsafe fn pass_avx512<const P: usize>(
        &self,
        planes: &[f32],
        y: Out,
        g: Geometry,
        band: Range<usize>,
    ) {
        use std::arch::x86_64::*;
        let (k, c) = (self.k, self.c);
        assert!(planes.len() >= c * g.ph * g.rw && y.len() >= (g.o0 + P) * g.oh * g.ow);
        assert!(g.o0 + P <= self.m && g.oh + k - 1 <= g.ph && g.ow + k - 1 + LANES <= g.rw);
        let taps = &self.packed[g.o0 / MAX_PASS];
        assert!(taps.len() == c * k * k * P);
        let (pp, tp) = (planes.as_ptr(), taps.as_ptr());
        let yp = y.ptr();
        for r in band {
            for x0 in (0..g.ow).step_by(LANES) {
                let mask: __mmask16 = if g.ow - x0 >= LANES {
                    0xffff
                } else {
                    (1u16 << (g.ow - x0)) - 1
                };
                let mut acc = [_mm512_setzero_ps(); P];
                let mut t = tp;
                for ci in 0..c {
                    for dy in 0..k {
                        // SAFETY (reads): inside row (ci, r + dy), which has LANES values of
                        // slack past the last padded pixel.
                        let rp = pp.add((ci * g.ph + r + dy) * g.rw + x0);
                        for dx in 0..k {
                            let v = _mm512_loadu_ps(rp.add(dx));
                            for (j, a) in acc.iter_mut().enumerate() {
                                *a = _mm512_fmadd_ps(v, _mm512_set1_ps(*t.add(j)), *a);
                            }
                            t = t.add(P);
                        }
                    }
                }
                for (j, a) in acc.iter().enumerate() {
                    let o = g.o0 + j;
                    let v = _mm512_add_ps(*a, _mm512_set1_ps(self.bias[o]));
                    _mm512_mask_storeu_ps(yp.add((o * g.oh + r) * g.ow + x0), mask, v);
                }
            }
        }
    }
}

/// Sizes of one run's planes and output, and the pass's first output channel.
#[derive(Clone, Copy)]
struct Geometry {
    ph: usize,
    rw: usize,
    oh: usize,
    ow: usize,
    o0: usize,
}

/// Whether this CPU runs the vector path.
pub fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

struct OnCpu;

impl Operator for OnCpu {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        OP
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Int64),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, k: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let pads = read_pads(k, 3, OP)?;
        let upsample = k.get::<i64>("upsample").unwrap_or(1).max(0) as usize;
        let (dims, w) = constant::<f32>(k, OP, 1, "weights W")?;
        let (_, bias) = constant::<f32>(k, OP, 2, "bias B")?;
        let conv = NarrowConv::new(&w, &dims, &bias, pads, upsample)
            .map_err(|e| ort::Error::new(format!("{OP}: {e}")))?;
        Ok(kernel(OP, conv))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Upsample, reflect-pad and convolve from the definitions, in f64.
    fn reference(x: &[f32], [n, c, h, w]: [usize; 4], cv: &NarrowConv) -> Vec<f64> {
        let (u, p, k, m) = (cv.upsample, cv.pads, cv.k, cv.m);
        let (uh, uw) = (h * u, w * u);
        let (oh, ow) = (uh + p.top + p.bottom - k + 1, uw + p.left + p.right - k + 1);
        let mut y = vec![0f64; n * m * oh * ow];
        for i in 0..n {
            for o in 0..m {
                for r in 0..oh {
                    for col in 0..ow {
                        let mut s = cv.bias[o] as f64;
                        for ci in 0..c {
                            for dy in 0..k {
                                for dx in 0..k {
                                    let sr = reflect((r + dy) as i64 - p.top as i64, uh) / u;
                                    let sc = reflect((col + dx) as i64 - p.left as i64, uw) / u;
                                    let v = x[((i * c + ci) * h + sr) * w + sc] as f64;
                                    s += v * cv.w[((o * c + ci) * k + dy) * k + dx] as f64;
                                }
                            }
                        }
                        y[((i * m + o) * oh + r) * ow + col] = s;
                    }
                }
            }
        }
        y
    }

    #[test]
    fn matches_the_definition_at_odd_sizes_with_and_without_upsampling() {
        let mut seed = 11u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        // (N, C, H, W, M, K, pad, upsample): the model's 4 into 3 (9x9) and 8 into 4 after
        // upsampling (3x3), then odd sizes with partial vectors and 6 outputs (two passes).
        for (n, c, h, w, m, k, pad, u) in [
            (1, 4, 13, 37, 3, 9, 4, 1),
            (1, 8, 7, 9, 4, 3, 1, 2),
            (2, 3, 5, 21, 6, 5, 2, 1),
            (1, 2, 3, 3, 1, 1, 0, 2),
        ] {
            let x: Vec<f32> = (0..n * c * h * w).map(|_| rnd()).collect();
            let wv: Vec<f32> = (0..m * c * k * k).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..m).map(|_| rnd()).collect();
            let p = Pads {
                top: pad,
                left: pad,
                bottom: pad,
                right: pad,
            };
            let cv =
                NarrowConv::new(&wv, &[m as i64, c as i64, k as i64, k as i64], &b, p, u).unwrap();
            let shape = cv
                .out_shape(&[n as i64, c as i64, h as i64, w as i64])
                .unwrap();
            let want = reference(&x, [n, c, h, w], &cv);
            assert_eq!(shape.iter().product::<usize>(), want.len());
            let mut y = vec![f32::NAN; want.len()];
            cv.run(&x, [n, c, h, w], &mut y, &mut Vec::new());
            // Bands of rows on three threads: the same values.
            crate::op_threads::set(3);
            let mut y3 = vec![f32::NAN; want.len()];
            cv.run(&x, [n, c, h, w], &mut y3, &mut Vec::new());
            crate::op_threads::set(1);
            assert_eq!(y3, y, "three threads");
            let worst = y
                .iter()
                .zip(&want)
                .map(|(&a, &b)| (a as f64 - b).abs())
                .fold(0.0, f64::max);
            assert!(
                worst < 1e-4,
                "{n}x{c}x{h}x{w} into {m}, {k}x{k}, x{u}: off by {worst}"
            );
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused_by_name() {
        let p = Pads::uniform(4);
        let w = vec![0.5f32; 3 * 4 * 81];
        assert!(NarrowConv::new(&w, &[3, 4, 9], &[], p, 1)
            .unwrap_err()
            .contains("[M, C, K, K]"));
        assert!(NarrowConv::new(&w, &[3, 4, 9, 9], &[1.0; 2], p, 1)
            .unwrap_err()
            .contains("bias B"));
        assert!(NarrowConv::new(&w, &[3, 4, 9, 9], &[], p, 3)
            .unwrap_err()
            .contains("upsample"));
        let cv = NarrowConv::new(&w, &[3, 4, 9, 9], &[], p, 1).unwrap();
        assert!(cv
            .out_shape(&[1, 3, 8, 8])
            .unwrap_err()
            .contains("3 channels"));
        assert!(cv
            .out_shape(&[1, 4, 4, 8])
            .unwrap_err()
            .contains("reflect beyond"));
        assert_eq!(cv.out_shape(&[2, 4, 8, 10]).unwrap(), [2, 3, 8, 10]);
    }
}
