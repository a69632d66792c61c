//! framewise's own ONNX operator `ai.framewise:InstanceNormAffine`: an instance normalisation,
//! the per-channel scale and shift that follow it in a style model (the style's gamma and beta)
//! and an optional ReLU, in one op. ONNX Runtime's CUDA provider runs InstanceNormalization with
//! cuDNN's batch-norm kernel, one block per channel, which left most of an H100 idle and took
//! 33–40 % of the model's GPU time (BENCHMARKS.md, session 6); the CUDA kernel here
//! (worker/cuda/instance_norm.cu) spreads each channel over many blocks and makes two passes
//! over memory where the unfused ops make five. The graph rewrite that introduces the op is
//! `optimize::fuse_norm_affine`; the CPU kernel lets a fused model run (and be tested) anywhere.
//!
//! y = act((x - mean) / sqrt(var + epsilon) * scale * gamma + bias * gamma + beta), with mean and
//! var per image and channel of x [N, C, ...], scale and bias [C], gamma and beta per channel
//! ([1, C, 1, 1], [C, 1, 1] or [N, C, 1, 1]), act = ReLU when the attribute `relu` is 1. With a
//! sixth input, style weights w [S], gamma and beta are [S, C] and mixed inside the op
//! (gamma_c = sum_s w_s gamma[s, c]): a multi-style model's conditional normalisation, which
//! the graph otherwise computes with four small ops per parameter and normalisation. With a
//! seventh input, ONNX Pad's pads (int64, constant), the output is the result reflect-padded
//! along H and W: the Pad before the next convolution, folded into the op's write.
//!
//! Channels last, X or Y may be space to depth (attributes `space_to_depth_in` / `_out`):
//! [N, ceil(H/2), ceil(W/2), 4C], each 2x2 block of pixels one pixel of 4C channels, so that the
//! model's 9x9 convolutions on 3 and 4 channels run as 5x5 ones on 12 and 16
//! (`optimize::space_to_depth`). X's own H and W then come from a ninth input whose shape is
//! [N, H, W, ...] (its values are not read): an odd side cannot be told from X's.

use crate::op_threads::Out;
use crate::optimize::{f16_to_f32, f32_to_f16};
use ort::memory::MemoryType;
use ort::operator::{
    BoxedKernel, ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput,
    OperatorOutput,
};
use ort::value::{DynTensor, DynTensorValueType, TensorElementType, ValueRef};
use std::ops::Range;

/// The custom domain the rewritten model's fused nodes live in.
pub const DOMAIN: &str = "ai.framewise";
/// The fused op's name.
pub const OP: &str = "InstanceNormAffine";
/// The same op on fp16 X and Y (its parameters stay fp32), channels last only on a GPU.
pub const OP_HALF: &str = "InstanceNormAffineHalf";

/// The operator domain a session needs to load a model with fused normalisations.
pub fn domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(DOMAIN)?
        .add(OnCpu { half: false })?
        .add(OnCuda { half: false })?
        .add(OnCpu { half: true })?
        .add(OnCuda { half: true })
        .and_then(crate::pad_op::add_to)
        .and_then(crate::pixels_op::add_to)
        .and_then(crate::conv_op::add_to)
        .and_then(crate::narrow_conv_op::add_to)
}

/// The op's name for f32 or f16 values.
fn op_name(half: bool) -> &'static str {
    if half {
        OP_HALF
    } else {
        OP
    }
}

/// How the input is laid out, from the shapes alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub images: usize,
    pub channels: usize,
    /// Values per image and channel (H x W).
    pub plane: usize,
    /// Gamma (beta) has one value per image and channel, not one per channel.
    pub gamma_per_image: bool,
    pub beta_per_image: bool,
    /// With style weights: how many (gamma and beta are then [styles, channels]); else 0.
    pub styles: usize,
    /// Width of an input plane (its last dimension).
    pub width: usize,
    /// Reflect padding of the output along H and W.
    pub pads: Pads,
    /// X is [N, H, W, C] (attribute `channels_last`), as tensor-core convolutions want it.
    pub channels_last: bool,
    /// The output is the result upsampled this many times (nearest, before the padding): a
    /// Resize between the op and the next convolution's Pad, folded in. 1 or 2; channels last.
    pub upsample: usize,
    /// A residual input of X's shape is added to the result (after the ReLU, before the
    /// upsampling): the residual block's Add, folded in. Channels last.
    pub residual: bool,
    /// X / Y are space to depth (`pixel_at`); `plane` and `width` are the image's own.
    pub in_s2d: bool,
    pub out_s2d: bool,
}

impl Layout {
    /// Whether the output is padded (its planes larger than the input's).
    pub fn padded(&self) -> bool {
        self.pads != Pads::default()
    }

    /// Height and width of an output plane.
    pub fn out_hw(&self) -> (usize, usize) {
        let h = self.plane / self.width;
        (
            h * self.upsample + self.pads.top + self.pads.bottom,
            self.width * self.upsample + self.pads.left + self.pads.right,
        )
    }

    /// The layout with the op's `upsample` attribute and its residual input's shape (if any)
    /// checked: both need channels last, the residual X's shape.
    pub fn with_extras(
        mut self,
        upsample: usize,
        residual: Option<&[i64]>,
        x: &[i64],
    ) -> Result<Self, String> {
        if (upsample != 1 || residual.is_some()) && !self.channels_last {
            return Err("upsample and a residual input need channels_last".into());
        }
        if !matches!(upsample, 1 | 2) {
            return Err(format!("upsample {upsample}: expected 1 or 2"));
        }
        if let Some(r) = residual.filter(|&r| r != x) {
            return Err(format!(
                "input residual has shape {r:?}; expected X's {x:?}"
            ));
        }
        self.upsample = upsample;
        self.residual = residual.is_some();
        Ok(self)
    }

    /// The layout with X and / or Y space to depth (channels last; not with a residual, which
    /// is read where X is).
    pub fn with_space_to_depth(mut self, input: bool, output: bool) -> Result<Self, String> {
        if (input || output) && !self.channels_last {
            return Err("space_to_depth needs channels_last".into());
        }
        if input && self.residual {
            return Err("space_to_depth_in cannot take a residual input".into());
        }
        self.in_s2d = input;
        self.out_s2d = output;
        Ok(self)
    }

    /// Pixels X stores per image (space to depth rounds an odd side up).
    pub fn stored_pixels(&self) -> usize {
        image_pixels(self.plane / self.width, self.width, self.in_s2d)
    }

    /// The output's shape: x's with H and W padded (channels last: [N, H, W, C] of the output
    /// image, or that space to depth).
    pub fn out_shape(&self, x: &[i64]) -> Vec<i64> {
        let (h, w) = self.out_hw();
        if self.channels_last {
            let (h, w, c) = if self.out_s2d {
                (h.div_ceil(2), w.div_ceil(2), 4 * self.channels)
            } else {
                (h, w, self.channels)
            };
            return [self.images, h, w, c].iter().map(|&v| v as i64).collect();
        }
        let mut s = x.to_vec();
        if self.padded() {
            s[2] = h as i64;
            s[3] = w as i64;
        }
        s
    }
}

/// Where pixel (y, x) of an image `w` pixels wide sits, in pixels from the image's start: plain
/// [H, W], or space to depth [ceil(H/2), ceil(W/2), 2, 2] (instance_norm.cu's row_at + col_at).
pub(crate) fn pixel_at(y: usize, x: usize, w: usize, s2d: bool) -> usize {
    if s2d {
        ((y / 2) * w.div_ceil(2) + x / 2) * 4 + (y % 2) * 2 + x % 2
    } else {
        y * w + x
    }
}

/// Pixels an h x w image takes, plain or space to depth.
pub(crate) fn image_pixels(h: usize, w: usize, s2d: bool) -> usize {
    if s2d {
        4 * h.div_ceil(2) * w.div_ceil(2)
    } else {
        h * w
    }
}

/// The image behind a space-to-depth X [N, Hs, Ws, 4C]: [N, H, W, C], H and W from the
/// reference's shape [N, H, W, ...] (or 2 Hs and 2 Ws without one). The error names the input.
pub fn space_to_depth_dims(x: &[i64], reference: Option<&[i64]>) -> Result<[i64; 4], String> {
    let &[n, hs, ws, c4] = x else {
        return Err(format!(
            "input X has shape {x:?}; space_to_depth_in needs [N, H/2, W/2, 4C]"
        ));
    };
    if c4 % 4 != 0 || [n, hs, ws, c4].iter().any(|&d| d < 1) {
        return Err(format!(
            "input X has shape {x:?}; space_to_depth_in needs [N, H/2, W/2, 4C] with no empty dimension"
        ));
    }
    let (h, w) = match reference {
        None => (2 * hs, 2 * ws),
        Some(&[rn, h, w, ..]) if rn == n && (h + 1) / 2 == hs && (w + 1) / 2 == ws => (h, w),
        Some(r) => {
            return Err(format!(
                "input reference has shape {r:?}; expected [{n}, H, W, ...] with H and W halved (rounded up) {hs} and {ws} (X's {x:?})"
            ))
        }
    };
    Ok([n, h, w, c4 / 4])
}

/// Reflect padding folded into the op, in values: top, left, bottom, right.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pads {
    pub top: usize,
    pub left: usize,
    pub bottom: usize,
    pub right: usize,
}

impl Pads {
    /// The same padding on every side (tests).
    #[cfg(test)]
    pub(crate) fn uniform(n: usize) -> Self {
        Self {
            top: n,
            left: n,
            bottom: n,
            right: n,
        }
    }

    /// From ONNX Pad's `pads` of a 4-d tensor ([n, c, h, w] begins, then ends): only H and W
    /// may be padded, by zero or more.
    pub fn from_onnx(p: &[i64]) -> Result<Self, String> {
        match p {
            [0, 0, t, l, 0, 0, b, r] if [t, l, b, r].iter().all(|&&v| v >= 0) => Ok(Self {
                top: *t as usize,
                left: *l as usize,
                bottom: *b as usize,
                right: *r as usize,
            }),
            _ => Err(format!(
                "pads {p:?}: expected [0, 0, top, left, 0, 0, bottom, right] with no negative value"
            )),
        }
    }
}

/// The per-channel parameters, as the op receives them.
#[derive(Clone, Copy, Debug)]
pub struct Params<'a> {
    pub scale: &'a [f32],
    pub bias: &'a [f32],
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    /// Style weights mixing gamma's and beta's rows, if the op has them.
    pub mix: Option<&'a [f32]>,
    /// Added to the result (`Layout::residual`), X's shape.
    pub residual: Option<&'a [f32]>,
}

/// Checks the inputs' shapes against each other: x [N, C, ...] (or [N, H, W, C] when
/// `channels_last`) with at least one value per plane, scale and bias [C], gamma and beta per
/// channel, or [S, C] with style weights [S]. The error names the input.
#[allow(clippy::too_many_arguments)]
pub fn layout(
    x: &[i64],
    scale: &[i64],
    bias: &[i64],
    gamma: &[i64],
    beta: &[i64],
    mix: Option<&[i64]>,
    pads: Pads,
    channels_last: bool,
) -> Result<Layout, String> {
    if x.len() < 3 || x.iter().any(|&d| d < 1) {
        return Err(format!(
            "input X has shape {x:?}; expected [N, C, H, ...] with no empty dimension"
        ));
    }
    let (n, c, plane, width, hw) = match (channels_last, x) {
        (true, &[n, h, w, c]) => (n, c, h * w, w, Some((h, w))),
        (true, _) => {
            return Err(format!(
                "input X has shape {x:?}; channels_last needs [N, H, W, C]"
            ))
        }
        (false, &[n, c, h, w]) => (n, c, h * w, w, Some((h, w))),
        (false, _) => (x[0], x[1], x[2..].iter().product(), x[x.len() - 1], None),
    };
    let (n, c, plane, width) = (n as usize, c as usize, plane as usize, width as usize);
    if pads != Pads::default() {
        let Some((h, w)) = hw else {
            return Err(format!(
                "input X has shape {x:?}; padding needs [N, C, H, W]"
            ));
        };
        if pads.top.max(pads.bottom) as i64 >= h || pads.left.max(pads.right) as i64 >= w {
            return Err(format!(
                "pads {pads:?} reflect beyond X's {h}x{w} planes (at most {} and {})",
                h - 1,
                w - 1
            ));
        }
    }
    for (name, s) in [("scale", scale), ("B", bias)] {
        if s != [c as i64] {
            return Err(format!(
                "input {name} has shape {s:?}; expected [{c}] (X's channels)"
            ));
        }
    }
    let per_image = |name: &str, s: &[i64]| -> Result<bool, String> {
        let bad = || {
            format!("input {name} has shape {s:?}; expected one value per channel ([1, {c}, 1, 1], [{c}, 1, 1] or [{n}, {c}, 1, 1])")
        };
        match s {
            [ch, 1, 1] if *ch == c as i64 => Ok(false),
            [1, ch, 1, 1] if *ch == c as i64 => Ok(false),
            [im, ch, 1, 1] if *im == n as i64 && *ch == c as i64 => Ok(true),
            _ => Err(bad()),
        }
    };
    let (gamma_per_image, beta_per_image, styles) = match mix {
        Some(w) => {
            let &[styles] = w else {
                return Err(format!("input style_weights has shape {w:?}; expected [S]"));
            };
            for (name, m) in [("gamma", gamma), ("beta", beta)] {
                if m != [styles, c as i64] {
                    return Err(format!(
                        "input {name} has shape {m:?}; expected [{styles}, {c}] (style weights x X's channels)"
                    ));
                }
            }
            (false, false, styles as usize)
        }
        None => (per_image("gamma", gamma)?, per_image("beta", beta)?, 0),
    };
    Ok(Layout {
        images: n,
        channels: c,
        plane,
        gamma_per_image,
        beta_per_image,
        styles,
        width,
        pads,
        channels_last,
        upsample: 1,
        residual: false,
        in_s2d: false,
        out_s2d: false,
    })
}

/// The per-(image, channel) mean, factor and offset: y = act((x - mean) * a + b). (Folding the
/// mean into b loses digits to cancellation when the mean is large against the spread.)
fn coefficients(
    l: &Layout,
    ch: usize,
    sums: (f64, f64, f64),
    eps: f32,
    p: &Params,
) -> (f32, f32, f32) {
    let (k, s1, s2) = sums;
    let n = l.plane as f64;
    let m = s1 / n;
    let var = (s2 / n - m * m).max(0.0);
    let mean = k + m;
    let rstd = 1.0 / (var + eps as f64).sqrt();
    let c = ch % l.channels;
    let (g, bt) = gamma_beta(l, ch, p);
    let a = p.scale[c] as f64 * rstd * g;
    (mean as f32, a as f32, (p.bias[c] as f64 * g + bt) as f32)
}

/// Gamma and beta of plane `ch` (image x channels + channel), mixed from the styles' rows when
/// the op has style weights.
fn gamma_beta(l: &Layout, ch: usize, p: &Params) -> (f64, f64) {
    let c = ch % l.channels;
    match p.mix {
        Some(w) => w.iter().enumerate().fold((0.0, 0.0), |(g, b), (s, &ws)| {
            let i = s * l.channels + c;
            (
                g + ws as f64 * p.gamma[i] as f64,
                b + ws as f64 * p.beta[i] as f64,
            )
        }),
        None => (
            p.gamma[if l.gamma_per_image { ch } else { c }] as f64,
            p.beta[if l.beta_per_image { ch } else { c }] as f64,
        ),
    }
}

/// The CPU kernel: the same maths as the CUDA one (sums shifted by each plane's first value,
/// added in f64), one plane at a time, the planes in bands over the session's threads
/// (op_threads.rs; channels last: one thread). Compiled for AVX2 and FMA too, taken where the
/// CPU has them: built for baseline x86-64, each `mul_add` was a call into libm's software
/// fmaf, which made the op five times slower than ONNX Runtime's normalisation (perf,
/// BENCHMARKS.md).
pub fn normalize(x: &[f32], y: &mut [f32], l: &Layout, p: &Params, eps: f32, relu: bool) {
    #[cfg(target_arch = "x86_64")]
    let fma =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    let fma = false;
    if l.channels_last {
        #[cfg(target_arch = "x86_64")]
        if fma {
            // SAFETY: the CPU has the features the copy is compiled for (checked above).
            return unsafe { channels_last_fma(x, y, l, p, eps, relu) };
        }
        return normalize_channels_last(x, y, l, p, eps, relu);
    }
    let (out_h, out_w) = l.out_hw();
    let planes = (x.len() / l.plane.max(1)).min(y.len() / (out_h * out_w).max(1));
    let out = Out::new(y);
    crate::op_threads::bands(planes, |band| {
        #[cfg(target_arch = "x86_64")]
        if fma {
            // SAFETY: as above; each band writes only its own planes of y.
            return unsafe { planes_fma(x, out, band, l, p, eps, relu) };
        }
        planes_any(x, out, band, l, p, eps, relu)
    });
}

/// `normalize_channels_last` with AVX2 and FMA instructions.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn channels_last_fma(
    x: &[f32],
    y: &mut [f32],
    l: &Layout,
    p: &Params,
    eps: f32,
    relu: bool,
) {
    normalize_channels_last(x, y, l, p, eps, relu)
}

/// `planes_any` with AVX2 and FMA instructions.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn planes_fma(
    x: &[f32],
    y: Out,
    band: Range<usize>,
    l: &Layout,
    p: &Params,
    eps: f32,
    relu: bool,
) {
    planes_any(x, y, band, l, p, eps, relu)
}

/// Planes `band` of x [N, C, ...] normalised into y (each plane's output rows padded).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn planes_any(x: &[f32], y: Out, band: Range<usize>, l: &Layout, p: &Params, eps: f32, relu: bool) {
    let (out_h, out_w) = l.out_hw();
    for ch in band {
        let xc = &x[ch * l.plane..][..l.plane];
        // SAFETY: plane ch of y is this band's alone (op_threads::bands).
        let yc = unsafe { y.row(ch * out_h * out_w, out_h * out_w) };
        let k = xc[0];
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        // Eight f32 lanes (vectorised) over blocks of 256 values, each block's lanes added in
        // f64: a long f32 running sum alone lost 4e-5 of the variance in the unit test.
        for block in xc.chunks(256) {
            let (mut b1, mut b2) = ([0.0f32; 8], [0.0f32; 8]);
            let mut lanes = block.chunks_exact(8);
            for v in &mut lanes {
                for j in 0..8 {
                    let d = v[j] - k;
                    b1[j] += d;
                    b2[j] += d * d;
                }
            }
            for &v in lanes.remainder() {
                let d = v - k;
                b1[0] += d;
                b2[0] += d * d;
            }
            s1 += b1.iter().map(|&v| v as f64).sum::<f64>();
            s2 += b2.iter().map(|&v| v as f64).sum::<f64>();
        }
        let (mean, a, b) = coefficients(l, ch, (k as f64, s1, s2), eps, p);
        let f = |v: f32| {
            let r = (v - mean).mul_add(a, b);
            if relu {
                r.max(0.0)
            } else {
                r
            }
        };
        if !l.padded() {
            for (o, &v) in yc.iter_mut().zip(xc) {
                *o = f(v);
            }
            continue;
        }
        let (h, w, pd) = (l.plane / l.width, l.width, l.pads);
        for (r, row) in yc.chunks_exact_mut(out_w).enumerate() {
            let src = &xc[reflect(r as i64 - pd.top as i64, h) * w..][..w];
            // The row itself in one run (vectorised), then the reflected edges.
            for (o, &v) in row[pd.left..pd.left + w].iter_mut().zip(src) {
                *o = f(v);
            }
            for col in (0..pd.left).chain(pd.left + w..out_w) {
                row[col] = f(src[reflect(col as i64 - pd.left as i64, w)]);
            }
        }
    }
}

/// `normalize` for x [N, H, W, C] (or space to depth): per image, each channel's sums over
/// blocks of 256 pixels (f32, then added in f64), then the output rows with their reflected
/// edges (space to depth: an odd output's extra row and column are zeros).
#[inline(always)]
fn normalize_channels_last(x: &[f32], y: &mut [f32], l: &Layout, p: &Params, eps: f32, relu: bool) {
    let c = l.channels;
    let (h, w, pd) = (l.plane / l.width, l.width, l.pads);
    let (out_h, out_w) = l.out_hw();
    let (rows, cols) = if l.out_s2d {
        (out_h.next_multiple_of(2), out_w.next_multiple_of(2))
    } else {
        (out_h, out_w)
    };
    let src_at = |y: usize, x: usize| pixel_at(y, x, w, l.in_s2d) * c;
    for (n, (xi, yi)) in x
        .chunks_exact(l.stored_pixels() * c)
        .zip(y.chunks_exact_mut(rows * cols * c))
        .enumerate()
    {
        let k = &xi[..c];
        let (mut s1, mut s2) = (vec![0.0f64; c], vec![0.0f64; c]);
        let (mut b1, mut b2) = (vec![0.0f32; c], vec![0.0f32; c]);
        for i in 0..l.plane {
            let at = src_at(i / w, i % w);
            for j in 0..c {
                let d = xi[at + j] - k[j];
                b1[j] += d;
                b2[j] += d * d;
            }
            if i % 256 == 255 || i + 1 == l.plane {
                for j in 0..c {
                    s1[j] += b1[j] as f64;
                    s2[j] += b2[j] as f64;
                }
                b1.fill(0.0);
                b2.fill(0.0);
            }
        }
        let coef: Vec<(f32, f32, f32)> = (0..c)
            .map(|j| coefficients(l, n * c + j, (k[j] as f64, s1[j], s2[j]), eps, p))
            .collect();
        let u = l.upsample;
        let ri = p.residual.map(|r| &r[n * l.plane * c..][..l.plane * c]);
        for r in 0..rows {
            for col in 0..cols {
                let out = &mut yi[pixel_at(r, col, cols, l.out_s2d) * c..][..c];
                if r >= out_h || col >= out_w {
                    out.fill(0.0);
                    continue;
                }
                let sr = reflect(r as i64 - pd.top as i64, h * u) / u;
                let sc = reflect(col as i64 - pd.left as i64, w * u) / u;
                let at = src_at(sr, sc);
                for (j, (o, &v)) in out.iter_mut().zip(&xi[at..at + c]).enumerate() {
                    let (mean, a, b) = coef[j];
                    let r = (v - mean).mul_add(a, b);
                    let r = if relu { r.max(0.0) } else { r };
                    *o = ri.map_or(r, |ri| r + ri[at + j]);
                }
            }
        }
    }
}

/// Index `i` reflected into [0, n) as ONNX Pad's "reflect" does (the edge is not repeated).
pub(crate) fn reflect(i: i64, n: usize) -> usize {
    let i = i.unsigned_abs() as usize;
    if i >= n {
        2 * n - 2 - i
    } else {
        i
    }
}

/// A CPU tensor's values as `T` (its element type, or u16 for f16), for the ops' CPU kernels.
///
/// # Safety
/// `v` is in host memory and its elements have `T`'s size and alignment.
pub(crate) unsafe fn host_values<T>(v: &DynTensor) -> &[T] {
    let n = v.shape().iter().product::<i64>() as usize;
    // SAFETY: as the caller promises; data_ptr is the start of `n` elements.
    unsafe { std::slice::from_raw_parts(v.data_ptr() as *const T, n) }
}

/// `host_values` of an output to write (data_ptr is GetTensorMutableData underneath).
///
/// # Safety
/// As `host_values`, and nothing else reads or writes `v` meanwhile (an output ONNX Runtime
/// has just allocated).
#[allow(clippy::mut_from_ref)]
pub(crate) unsafe fn host_values_mut<T>(v: &DynTensor) -> &mut [T] {
    let n = v.shape().iter().product::<i64>() as usize;
    // SAFETY: as the caller promises.
    unsafe { std::slice::from_raw_parts_mut(v.data_ptr() as *mut T, n) }
}

/// For a run of framewise's op `op` on the GPU holding `x`: the session's CUDA stream, the
/// device, and the kernels loaded there (kept in `cache` after the first run).
pub(crate) fn cuda_run(
    ctx: &ComputeContext,
    x: &DynTensor,
    cache: &mut Option<(i32, crate::cuda::NormKernels)>,
    op: &str,
) -> ort::Result<(*mut std::ffi::c_void, i32, crate::cuda::NormKernels)> {
    let stream = ctx
        .stream()?
        .ok_or_else(|| ort::Error::new(format!("{op}: no CUDA stream")))?;
    let device = x.memory_info().device_id();
    let kernels = crate::cuda::NormKernels::cached(cache, device)
        .map_err(|e| ort::Error::new(format!("{op} on GPU {device}: {e}")))?;
    Ok((stream.as_ptr(), device, kernels))
}

/// The constant pads of input `idx`, read when the kernel is made.
pub(crate) fn read_pads(k: &KernelContext<'_>, idx: usize, op: &str) -> ort::Result<Pads> {
    let t = k.constant_input::<DynTensorValueType>(idx).map_err(|e| {
        ort::Error::new(format!("{op}: pads (input {idx}) must be a constant: {e}"))
    })?;
    let (_, v) = t.try_extract_tensor::<i64>()?;
    Pads::from_onnx(v).map_err(|e| ort::Error::new(format!("{op}: {e}")))
}

/// Whether the node has input `idx` (not absent, not the empty name of a skipped optional one).
/// By name alone: ort's `KernelContext::inputs` asks every input for its type and fails on a
/// skipped one (a residual after no pads, or pads after no style weights).
pub(crate) fn has_input(k: &KernelContext<'_>, idx: usize) -> bool {
    use ort::AsPointer;
    let api = ort::api();
    let info = k.ptr();
    let ok = |s: ort::sys::OrtStatusPtr| {
        if !s.0.is_null() {
            // SAFETY: a status ONNX Runtime returned, released once.
            unsafe { (api.ReleaseStatus)(s.0) };
        }
        s.0.is_null()
    };
    let (mut count, mut len) = (0usize, 0usize);
    // SAFETY: `info` is the kernel info ONNX Runtime handed to create_kernel, alive during it;
    // the out-pointers are locals; a null name buffer asks for the name's size only.
    unsafe {
        ok((api.KernelInfo_GetInputCount)(info, &mut count))
            && idx < count
            && ok((api.KernelInfo_GetInputName)(
                info,
                idx,
                std::ptr::null_mut(),
                &mut len,
            ))
            && len > 1
    }
}

/// The attributes and the constant pads, read once per node.
#[derive(Clone, Copy, Debug)]
struct Attrs {
    eps: f32,
    relu: bool,
    pads: Pads,
    channels_last: bool,
    upsample: usize,
    s2d_in: bool,
    s2d_out: bool,
}

impl Attrs {
    fn of(k: &KernelContext<'_>) -> ort::Result<Self> {
        let pads = if has_input(k, 6) {
            read_pads(k, 6, OP)?
        } else {
            Pads::default()
        };
        Ok(Self {
            eps: k.get::<f32>("epsilon").unwrap_or(1e-5),
            relu: k.get::<i64>("relu").unwrap_or(0) != 0,
            pads,
            channels_last: k.get::<i64>("channels_last").unwrap_or(0) != 0,
            upsample: k.get::<i64>("upsample").unwrap_or(1).max(0) as usize,
            s2d_in: k.get::<i64>("space_to_depth_in").unwrap_or(0) != 0,
            s2d_out: space_to_depth_out(k, pads)
                .map_err(|e| ort::Error::new(format!("{OP}: {e}")))?,
        })
    }
}

/// The attribute `space_to_depth_out` = K: the output is read space to depth by a K x K
/// convolution (`optimize::space_to_depth`), which needs the padding to total K - 1 along H and
/// W (its output image then has X's size, the size its reader is told); checked here because
/// the rewrite may not see the pads' values (the graph computes them).
pub(crate) fn space_to_depth_out(k: &KernelContext<'_>, pads: Pads) -> Result<bool, String> {
    match k.get::<i64>("space_to_depth_out").unwrap_or(0) {
        0 => Ok(false),
        kernel if kernel > 0
            && (pads.top + pads.bottom) as i64 == kernel - 1
            && (pads.left + pads.right) as i64 == kernel - 1 =>
        {
            Ok(true)
        }
        kernel => Err(format!(
            "space_to_depth_out {kernel}: the pads {pads:?} must total {} along H and along W (a {kernel}x{kernel} convolution's)",
            kernel - 1
        )),
    }
}

fn inputs(half: bool) -> [OperatorInput; 9] {
    let f = TensorElementType::Float32;
    let values = if half { TensorElementType::Float16 } else { f };
    let mut v = [(); 9].map(|_| OperatorInput::required(f));
    v[0] = OperatorInput::required(values);
    v[5] = OperatorInput::optional(f);
    // The pads stay in host memory on a GPU too: read once, when the kernel is made (a GPU
    // copy could not be read there).
    v[6] = OperatorInput::optional(TensorElementType::Int64).memory_type(MemoryType::CPUInput);
    v[7] = OperatorInput::optional(values);
    // Only its shape is read: X's own H and W when X is space to depth.
    v[8] = OperatorInput::optional(values);
    v
}

// No shape inference: ort 2.0.0-rc.15 aborts on the symbolic dimensions it is handed (its
// ValueType round trip rejects them), and ONNX Runtime plans the output at run time anyway.
fn outputs(half: bool) -> [OperatorOutput; 1] {
    [OperatorOutput::required(if half {
        TensorElementType::Float16
    } else {
        TensorElementType::Float32
    })]
}

/// A run's inputs (the pads are read at creation).
struct Inputs<'a> {
    /// X, scale, B, gamma, beta.
    t: Vec<ValueRef<'a, DynTensorValueType>>,
    mix: Option<ValueRef<'a, DynTensorValueType>>,
    residual: Option<ValueRef<'a, DynTensorValueType>>,
    reference: Option<ValueRef<'a, DynTensorValueType>>,
}

fn inputs_of(ctx: &ComputeContext) -> ort::Result<Inputs<'_>> {
    let n = ctx.num_inputs()?;
    let get = |i: usize| -> ort::Result<Option<ValueRef<'_, DynTensorValueType>>> {
        match if i < n { ctx.input(i)? } else { None } {
            Some(v) => Ok(Some(v.downcast()?)),
            None => Ok(None),
        }
    };
    let mut t = Vec::with_capacity(5);
    for i in 0..5 {
        t.push(get(i)?.ok_or_else(|| ort::Error::new(format!("{OP}: input {i} is missing")))?);
    }
    Ok(Inputs {
        t,
        mix: get(5)?,
        residual: get(7)?,
        reference: get(8)?,
    })
}

/// The layout from the inputs' shapes.
fn layout_of(i: &Inputs, a: &Attrs) -> ort::Result<Layout> {
    let sh = |k: usize| -> &[i64] { i.t[k].shape() };
    let mix = i.mix.as_ref().map(|w| w.shape() as &[i64]);
    let residual = i.residual.as_ref().map(|r| r.shape() as &[i64]);
    let reference = i.reference.as_ref().map(|r| r.shape() as &[i64]);
    let image = if a.s2d_in {
        Some(
            space_to_depth_dims(sh(0), reference)
                .map_err(|e| ort::Error::new(format!("{OP}: {e}")))?,
        )
    } else {
        None
    };
    layout(
        image.as_ref().map_or(sh(0), |d| d.as_slice()),
        sh(1),
        sh(2),
        sh(3),
        sh(4),
        mix,
        a.pads,
        a.channels_last,
    )
    .and_then(|l| l.with_extras(a.upsample, residual, sh(0)))
    .and_then(|l| l.with_space_to_depth(a.s2d_in, a.s2d_out))
    .map_err(|e| ort::Error::new(format!("{OP}: {e}")))
}

/// The op on ONNX Runtime's CPU provider.
struct OnCpu {
    half: bool,
}

impl Operator for OnCpu {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        op_name(self.half)
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        inputs(self.half)
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        outputs(self.half)
    }

    fn create_kernel<'attr>(&self, k: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let a = Attrs::of(k)?;
        let half = self.half;
        Ok(Box::new(move |ctx: &ComputeContext| {
            let i = inputs_of(ctx)?;
            let l = layout_of(&i, &a)?;
            let t = &i.t;
            let mut v = Vec::with_capacity(4);
            for x in &t[1..] {
                v.push(x.try_extract_tensor::<f32>()?.1);
            }
            let mix = match &i.mix {
                Some(w) => Some(w.try_extract_tensor::<f32>()?.1),
                None => None,
            };
            // fp16 values through f32 (tests and CPU fallbacks; GPUs run the half kernels).
            // SAFETY: X and the residual are CPU tensors of the op's declared f16 type (u16 has
            // its size and alignment).
            let widen = |v: &ValueRef<'_, DynTensorValueType>| -> Vec<f32> {
                let h = unsafe { host_values::<u16>(v) };
                h.iter().map(|&b| f16_to_f32(b)).collect()
            };
            let residual_half = i.residual.as_ref().filter(|_| half).map(widen);
            let residual = match (&i.residual, &residual_half) {
                (_, Some(r)) => Some(r.as_slice()),
                (Some(r), None) => Some(r.try_extract_tensor::<f32>()?.1),
                (None, None) => None,
            };
            let p = Params {
                scale: v[0],
                bias: v[1],
                gamma: v[2],
                beta: v[3],
                mix,
                residual,
            };
            let mut y = ctx
                .output(0, l.out_shape(t[0].shape()))?
                .ok_or_else(|| ort::Error::new(format!("{OP}: no output")))?
                .downcast::<DynTensorValueType>()?;
            if !half {
                let (_, ys) = y.try_extract_tensor_mut::<f32>()?;
                normalize(
                    t[0].try_extract_tensor::<f32>()?.1,
                    ys,
                    &l,
                    &p,
                    a.eps,
                    a.relu,
                );
                return Ok(());
            }
            // SAFETY: Y is a CPU tensor of the op's declared f16 type that ONNX Runtime has just
            // allocated.
            let ys = unsafe { host_values_mut::<u16>(&y) };
            let x = widen(&t[0]);
            let mut out = vec![0.0; ys.len()];
            normalize(&x, &mut out, &l, &p, a.eps, a.relu);
            for (o, v) in ys.iter_mut().zip(out) {
                *o = f32_to_f16(v);
            }
            Ok(())
        }))
    }
}

/// The op on ONNX Runtime's CUDA provider: the kernels of worker/cuda/instance_norm.cu on the
/// session's stream.
struct OnCuda {
    half: bool,
}

impl Operator for OnCuda {
    type Kernel<'attr> = CudaKernel;

    fn name(&self) -> &str {
        op_name(self.half)
    }

    fn execution_provider_type(&self) -> Option<&str> {
        Some("CUDAExecutionProvider")
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        inputs(self.half)
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        outputs(self.half)
    }

    fn create_kernel<'attr>(&self, k: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        Ok(CudaKernel {
            attrs: Attrs::of(k)?,
            kernels: None,
        })
    }
}

struct CudaKernel {
    attrs: Attrs,
    /// The device's loaded kernels, from the first run on.
    kernels: Option<(i32, crate::cuda::NormKernels)>,
}

impl Kernel for CudaKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let i = inputs_of(ctx)?;
        let l = layout_of(&i, &self.attrs)?;
        let t = &i.t;
        let (stream, device, kernels) = cuda_run(ctx, &t[0], &mut self.kernels, OP)?;
        let info = t[0].memory_info();
        let plan = crate::cuda::NormPlan::new(&l).map_err(ort::Error::new)?;
        let alloc = ctx.allocator(info)?;
        let mut scratch = alloc.alloc::<f32>(plan.scratch_floats())?;
        // GetTensorMutableData underneath: the address is written by the kernel.
        let y = ctx
            .output(0, l.out_shape(t[0].shape()))?
            .ok_or_else(|| ort::Error::new(format!("{OP}: no output")))?
            .downcast::<DynTensorValueType>()?;
        let ptrs = crate::cuda::NormPtrs {
            x: t[0].data_ptr() as u64,
            y: y.data_ptr() as u64,
            scratch: scratch.as_mut_ptr() as u64,
            params: [1, 2, 3, 4].map(|k| t[k].data_ptr() as u64),
            mix: i.mix.as_ref().map_or(0, |w| w.data_ptr() as u64),
            residual: i.residual.as_ref().map_or(0, |r| r.data_ptr() as u64),
        };
        // SAFETY: the stream is the session's on the tensors' device; x, y, the parameters and
        // the scratch are ONNX Runtime's tensors and allocation there, of the sizes the plan was
        // made from (`layout` checked the shapes), alive until the stream has run the kernels
        // (ONNX Runtime orders its own reuse of them on the same stream).
        unsafe {
            crate::cuda::launch_norm(
                &kernels,
                stream,
                &plan,
                &ptrs,
                self.attrs.eps,
                self.attrs.relu,
                t[0].dtype().tensor_type() == Some(TensorElementType::Float16),
            )
        }
        .map_err(|e| ort::Error::new(format!("{OP} on GPU {device}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook formula in f64, two passes; gamma and beta mixed by hand; then the planes
    /// padded by mirroring rows and columns one at a time.
    fn reference(x: &[f32], l: &Layout, p: &Params, eps: f32, relu: bool) -> Vec<f32> {
        let mut planes = Vec::new();
        for (ch, xc) in x.chunks(l.plane).enumerate() {
            let c = ch % l.channels;
            let n = xc.len() as f64;
            let mean = xc.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = xc.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            let (g, b) = match p.mix {
                Some(w) => {
                    let mut gb = (0.0, 0.0);
                    for (s, &ws) in w.iter().enumerate() {
                        gb.0 += ws as f64 * p.gamma[s * l.channels + c] as f64;
                        gb.1 += ws as f64 * p.beta[s * l.channels + c] as f64;
                    }
                    gb
                }
                None => (
                    p.gamma[if l.gamma_per_image { ch } else { c }] as f64,
                    p.beta[if l.beta_per_image { ch } else { c }] as f64,
                ),
            };
            let mut rows: Vec<Vec<f32>> = xc
                .chunks(l.width)
                .map(|row| {
                    row.iter()
                        .map(|&v| {
                            let z = (v as f64 - mean) / (var + eps as f64).sqrt();
                            let r = (z * p.scale[c] as f64 + p.bias[c] as f64) * g + b;
                            (if relu { r.max(0.0) } else { r }) as f32
                        })
                        .collect()
                })
                .collect();
            let pd = l.pads;
            for row in rows.iter_mut() {
                let w = row.len();
                let left: Vec<f32> = (1..=pd.left).rev().map(|i| row[i]).collect();
                let right: Vec<f32> = (1..=pd.right).map(|i| row[w - 1 - i]).collect();
                *row = [left, row.clone(), right].concat();
            }
            let h = rows.len();
            let top: Vec<Vec<f32>> = (1..=pd.top).rev().map(|i| rows[i].clone()).collect();
            let bottom: Vec<Vec<f32>> = (1..=pd.bottom).map(|i| rows[h - 1 - i].clone()).collect();
            planes.push([top, rows, bottom].concat().concat());
        }
        planes.concat()
    }

    /// Deterministic values with a large offset per plane (what breaks a naive E[x²] - E[x]²).
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).max(1);
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 10_000) as f32 / 1_000.0 - 5.0 + (i / 997) as f32 * 40.0
            })
            .collect()
    }

    /// One kernel test: x's shape, gamma's and beta's, the style weights', the pads, the ReLU.
    struct Case(
        &'static [i64],
        &'static [i64],
        &'static [i64],
        Option<&'static [i64]>,
        [usize; 4],
        bool,
    );

    #[test]
    fn cpu_kernel_matches_the_formula() {
        let cases = [
            Case(
                &[1, 3, 7, 11],
                &[1, 3, 1, 1],
                &[3, 1, 1],
                None,
                [0; 4],
                true,
            ),
            Case(
                &[2, 4, 33, 17],
                &[2, 4, 1, 1],
                &[1, 4, 1, 1],
                None,
                [0; 4],
                false,
            ),
            Case(
                &[1, 2, 1, 1],
                &[1, 2, 1, 1],
                &[1, 2, 1, 1],
                None,
                [0; 4],
                true,
            ),
            Case(
                &[2, 5, 9, 13],
                &[26, 5],
                &[26, 5],
                Some(&[26]),
                [0; 4],
                true,
            ),
            // The style model's pads: 1 (3x3 convolutions) and 4 (9x9), odd sizes, uneven.
            Case(
                &[1, 3, 9, 13],
                &[26, 3],
                &[26, 3],
                Some(&[26]),
                [1, 1, 1, 1],
                true,
            ),
            Case(
                &[2, 2, 11, 7],
                &[1, 2, 1, 1],
                &[2, 1, 1],
                None,
                [4, 4, 4, 4],
                false,
            ),
            Case(
                &[1, 2, 5, 6],
                &[1, 2, 1, 1],
                &[2, 1, 1],
                None,
                [2, 0, 1, 3],
                true,
            ),
        ];
        for Case(shape, gamma_shape, beta_shape, mix_shape, [t, lf, b, r], relu) in cases {
            let c = shape[1] as usize;
            let count = |s: &[i64]| s.iter().product::<i64>() as usize;
            let x = values(count(shape), 1);
            let (scale, bias) = (values(c, 2), values(c, 3));
            let (gamma, beta) = (values(count(gamma_shape), 4), values(count(beta_shape), 5));
            let mix = mix_shape.map(|m| values(count(m), 6));
            let pads = Pads {
                top: t,
                left: lf,
                bottom: b,
                right: r,
            };
            let cs = [c as i64];
            let lay = |s: &[i64], last: bool| {
                layout(s, &cs, &cs, gamma_shape, beta_shape, mix_shape, pads, last).unwrap()
            };
            let l = lay(shape, false);
            let p = Params {
                scale: &scale,
                bias: &bias,
                gamma: &gamma,
                beta: &beta,
                mix: mix.as_deref(),
                residual: None,
            };
            let out = l.out_shape(shape);
            assert_eq!(
                out[2..],
                [shape[2] + (t + b) as i64, shape[3] + (lf + r) as i64]
            );
            let mut y = vec![0.0; count(&out)];
            normalize(&x, &mut y, &l, &p, 1e-5, relu);
            let want = reference(&x, &l, &p, 1e-5, relu);
            assert_eq!(y.len(), want.len());
            let worst = y
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
                .fold(0.0f32, f32::max);
            assert!(worst < 2e-5, "{shape:?}: worst relative error {worst}");
            if relu {
                assert!(y.iter().all(|&v| v >= 0.0));
            }
            // The planes in bands over three threads: the same values.
            crate::op_threads::set(3);
            let mut y3 = vec![0.0; count(&out)];
            normalize(&x, &mut y3, &l, &p, 1e-5, relu);
            crate::op_threads::set(1);
            assert_eq!(y3, y, "{shape:?} on three threads");
            // Channels last: the formula's result, transposed.
            let nhwc = |v: &[i64]| [v[0], v[2], v[3], v[1]];
            let xl = to_channels_last(&x, shape);
            let ll = lay(&nhwc(shape), true);
            assert_eq!(ll.out_shape(&nhwc(shape)), nhwc(&out));
            let mut yl = vec![0.0; y.len()];
            normalize(&xl, &mut yl, &ll, &p, 1e-5, relu);
            let worst = to_channels_last(&want, &out)
                .iter()
                .zip(&yl)
                .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
                .fold(0.0f32, f32::max);
            assert!(
                worst < 2e-5,
                "{shape:?} channels last: worst relative error {worst}"
            );
        }
    }

    #[test]
    fn channels_last_folds_the_residual_add_and_the_upsampling() {
        // [N, H, W, C] = [2, 5, 7, 4]: the op with a residual, upsampling 2x and uneven pads
        // against the plain op, then the Add, a nearest 2x Resize and a reflect Pad by hand.
        let x_shape = [2i64, 5, 7, 4];
        let (n, h, w, c) = (2usize, 5usize, 7usize, 4usize);
        let x = values(n * h * w * c, 7);
        let res = values(x.len(), 8);
        let (scale, bias) = (values(c, 2), values(c, 3));
        let (gamma, beta) = (values(c, 4), values(c, 5));
        let per = [1i64, 4, 1, 1];
        let pads = Pads {
            top: 1,
            left: 2,
            bottom: 3,
            right: 1,
        };
        let mk = |p: Pads| layout(&x_shape, &[4], &[4], &per, &per, None, p, true).unwrap();
        let mut p = Params {
            scale: &scale,
            bias: &bias,
            gamma: &gamma,
            beta: &beta,
            mix: None,
            residual: None,
        };
        let mut plain = vec![0.0; x.len()];
        normalize(&x, &mut plain, &mk(Pads::default()), &p, 1e-5, true);
        let l = mk(pads).with_extras(2, Some(&x_shape), &x_shape).unwrap();
        let (oh, ow) = l.out_hw();
        assert_eq!((oh, ow), (2 * h + 4, 2 * w + 3));
        assert_eq!(l.out_shape(&x_shape), [2, oh as i64, ow as i64, 4]);
        p.residual = Some(&res);
        let mut y = vec![0.0; n * oh * ow * c];
        normalize(&x, &mut y, &l, &p, 1e-5, true);
        for img in 0..n {
            for r in 0..oh {
                for col in 0..ow {
                    let sr = reflect(r as i64 - 1, 2 * h) / 2;
                    let sc = reflect(col as i64 - 2, 2 * w) / 2;
                    for ch in 0..c {
                        let at = ((img * h + sr) * w + sc) * c + ch;
                        let want = plain[at] + res[at];
                        let got = y[((img * oh + r) * ow + col) * c + ch];
                        assert!(
                            (got - want).abs() < 1e-5,
                            "{img} {r} {col} {ch}: {got} vs {want}"
                        );
                    }
                }
            }
        }
        // Only channels last, 1x or 2x, and a residual of X's shape.
        let nchw = layout(
            &[2, 4, 5, 7],
            &[4],
            &[4],
            &per,
            &per,
            None,
            Pads::default(),
            false,
        );
        let e = nchw.unwrap().with_extras(2, None, &x_shape).unwrap_err();
        assert!(e.contains("channels_last"), "{e}");
        assert!(mk(pads)
            .with_extras(3, None, &x_shape)
            .unwrap_err()
            .contains("upsample 3"));
        let e = mk(pads)
            .with_extras(1, Some(&[2, 5, 7, 3]), &x_shape)
            .unwrap_err();
        assert!(e.contains("input residual"), "{e}");
    }

    #[test]
    fn space_to_depth_reads_and_writes_the_same_values() {
        // [1, H, W, 3] with odd, even and mixed sides, padded by 4 (a 9x9 convolution next):
        // the op reading X as 2x2 blocks (an odd side's extra row or column holding garbage it
        // must skip) and writing Y as blocks (an odd side's extra ones zero) against the plain op.
        for (h, w) in [(7usize, 9usize), (6, 10), (7, 10), (6, 9)] {
            let c = 3;
            let x = values(h * w * c, 11);
            let per = [1i64, 3, 1, 1];
            let (scale, bias, gamma, beta) =
                (values(c, 2), values(c, 3), values(c, 4), values(c, 5));
            let p = Params {
                scale: &scale,
                bias: &bias,
                gamma: &gamma,
                beta: &beta,
                mix: None,
                residual: None,
            };
            let pads = Pads::uniform(4);
            let shape = [1i64, h as i64, w as i64, 3];
            let l = layout(&shape, &[3], &[3], &per, &per, None, pads, true).unwrap();
            let (oh, ow) = l.out_hw();
            let mut plain = vec![0.0; oh * ow * c];
            normalize(&x, &mut plain, &l, &p, 1e-5, true);
            // X as blocks, NaN where no pixel is.
            let (hs, ws) = (h.div_ceil(2), w.div_ceil(2));
            let mut xs = vec![f32::NAN; 4 * hs * ws * c];
            for y in 0..h {
                for xx in 0..w {
                    let at = pixel_at(y, xx, w, true) * c;
                    xs[at..at + c].copy_from_slice(&x[(y * w + xx) * c..][..c]);
                }
            }
            let stored = [1i64, hs as i64, ws as i64, 12];
            let image = space_to_depth_dims(&stored, Some(&shape)).unwrap();
            assert_eq!(image, shape);
            let ls = layout(&image, &[3], &[3], &per, &per, None, pads, true)
                .and_then(|l| l.with_space_to_depth(true, true))
                .unwrap();
            assert_eq!(ls.stored_pixels(), 4 * hs * ws);
            let out = ls.out_shape(&stored);
            assert_eq!(out, [1, oh.div_ceil(2) as i64, ow.div_ceil(2) as i64, 12]);
            let mut ys = vec![f32::NAN; out.iter().product::<i64>() as usize];
            normalize(&xs, &mut ys, &ls, &p, 1e-5, true);
            for r in 0..oh.next_multiple_of(2) {
                for col in 0..ow.next_multiple_of(2) {
                    let at = pixel_at(r, col, ow, true) * c;
                    for j in 0..c {
                        let want = if r < oh && col < ow {
                            plain[(r * ow + col) * c + j]
                        } else {
                            0.0
                        };
                        let got = ys[at + j];
                        assert!(
                            (got - want).abs() < 1e-5,
                            "{h}x{w} {r} {col} {j}: {got} vs {want}"
                        );
                    }
                }
            }
        }
        // The reference must match X's blocks; only channels last, no residual.
        let e = space_to_depth_dims(&[1, 4, 5, 12], Some(&[1, 9, 11, 3])).unwrap_err();
        assert!(e.contains("input reference"), "{e}");
        assert_eq!(
            space_to_depth_dims(&[1, 4, 5, 12], None).unwrap(),
            [1, 8, 10, 3]
        );
        assert!(space_to_depth_dims(&[1, 4, 5, 10], None)
            .unwrap_err()
            .contains("4C"));
        let per = [1i64, 3, 1, 1];
        let nchw = layout(
            &[1, 3, 4, 4],
            &[3],
            &[3],
            &per,
            &per,
            None,
            Pads::default(),
            false,
        );
        assert!(nchw
            .unwrap()
            .with_space_to_depth(true, false)
            .unwrap_err()
            .contains("channels_last"));
    }

    /// [N, C, H, W] values reordered to [N, H, W, C].
    fn to_channels_last(x: &[f32], s: &[i64]) -> Vec<f32> {
        let [_, c, h, w] = [s[0], s[1], s[2], s[3]].map(|d| d as usize);
        let mut out = vec![0.0; x.len()];
        for (i, &v) in x.iter().enumerate() {
            let (img, ch, r, col) = (i / (c * h * w), i / (h * w) % c, i / w % h, i % w);
            out[((img * h + r) * w + col) * c + ch] = v;
        }
        out
    }

    #[test]
    fn bad_shapes_name_the_input() {
        let none = Pads::default();
        let per = |x: &[i64], s: &[i64], g: &[i64], b: &[i64]| {
            layout(x, s, &[4], g, b, None, none, false)
        };
        let ok = per(&[1, 4, 8, 8], &[4], &[1, 4, 1, 1], &[4, 1, 1]).unwrap();
        assert_eq!((ok.images, ok.channels, ok.plane, ok.styles), (1, 4, 64, 0));
        let e = per(&[1, 4, 8, 8], &[3], &[1, 4, 1, 1], &[4, 1, 1]).unwrap_err();
        assert!(e.contains("input scale") && e.contains("[4]"), "{e}");
        // [4] broadcasts along W in ONNX, not per channel.
        let e = per(&[1, 4, 8, 4], &[4], &[4], &[4, 1, 1]).unwrap_err();
        assert!(e.contains("input gamma"), "{e}");
        let e = per(&[1, 4, 8, 8], &[4], &[1, 4, 1, 1], &[3, 4, 1, 1]).unwrap_err();
        assert!(e.contains("input beta"), "{e}");
        let e = per(&[1, 4], &[4], &[1, 4, 1, 1], &[4, 1, 1]).unwrap_err();
        assert!(e.contains("input X"), "{e}");
        // With style weights: [S, C] matrices.
        let x = [1i64, 4, 8, 8];
        let mix =
            |g: &[i64], b: &[i64], w: &[i64]| layout(&x, &[4], &[4], g, b, Some(w), none, false);
        assert_eq!(mix(&[26, 4], &[26, 4], &[26]).unwrap().styles, 26);
        let e = mix(&[26, 4], &[25, 4], &[26]).unwrap_err();
        assert!(e.contains("input beta") && e.contains("[26, 4]"), "{e}");
        let e = mix(&[26, 4], &[26, 4], &[1, 26]).unwrap_err();
        assert!(e.contains("style_weights"), "{e}");
        // Pads: only H and W, not negative, and reflection needs a bigger plane.
        assert!(Pads::from_onnx(&[0, 0, 1, 1, 0, 0, 1, 1]).is_ok());
        for bad in [
            &[0, 1, 1, 1, 0, 0, 1, 1][..],
            &[0, 0, -1, 1, 0, 0, 1, 1],
            &[1, 1, 1, 1],
        ] {
            let e = Pads::from_onnx(bad).unwrap_err();
            assert!(e.contains("pads"), "{e}");
        }
        let big = Pads { top: 8, ..none };
        let e = layout(&x, &[4], &[4], &[1, 4, 1, 1], &[4, 1, 1], None, big, false).unwrap_err();
        assert!(e.contains("reflect beyond") && e.contains("8x8"), "{e}");
    }

    #[test]
    fn ptx_is_built_from_the_cuda_source() {
        use sha2::{Digest, Sha256};
        let cu = include_str!("../cuda/instance_norm.cu");
        let ptx = include_str!("../cuda/instance_norm.ptx");
        let hash: String = Sha256::digest(cu.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let first = ptx.lines().next().unwrap_or_default();
        assert!(
            first.ends_with(&hash),
            "worker/cuda/instance_norm.ptx is stale (its first line: {first:?}; the .cu's sha256 is {hash}): run scripts/ptx.sh"
        );
    }
}
