//! framewise's op `ai.framewise:PixelsIn`, the image input of the GPU variants: packed RGB bytes
//! [N, H, W, 3] pass through, NV12 bytes [N, 3H/2, W, 1] (what NVDEC decodes to) are converted to
//! RGB on the device that runs the model. A GPU worker decoding on NVDEC then hands over the
//! decoder's own frames: GStreamer's conversion to RGB cost its CPU 2.9 ms per 720p frame
//! (BENCHMARKS.md, session 13, table 5), a tenth of what a frame costs the CPU end to end there.
//! The conversion is framewise's (`Yuv`, `nv12_to_rgb`): the stream's matrix and range, each
//! 2x2 block's chroma sample for its four pixels, rounded to the nearest byte; the CPU kernel
//! and the CUDA one compute it alike, and the worker uses the same function where a model has
//! no such input.

use crate::norm_op::{cuda_run, host_values, host_values_mut, DOMAIN};
use ort::memory::MemoryType;
use ort::operator::{
    BoxedKernel, ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput,
    OperatorOutput,
};
use ort::value::{DynTensorValueType, TensorElementType};

/// The op's name.
pub const OP: &str = "PixelsIn";

/// Adds the op, CPU and CUDA, to framewise's domain.
pub(crate) fn add_to(d: OperatorDomain) -> ort::Result<OperatorDomain> {
    debug_assert_eq!(DOMAIN, "ai.framewise");
    d.add(OnCpu)?.add(OnCuda)
}

/// A Y'CbCr → R'G'B' conversion of 8-bit values: rgb = m · (yuv − off), row by row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Yuv {
    pub m: [f32; 9],
    pub off: [f32; 3],
}

/// Which Y'CbCr matrix a stream uses (its colorimetry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum YuvMatrix {
    Bt601,
    Bt709,
    Bt2020,
}

impl Yuv {
    /// The conversion for `matrix`, in limited (16–235, 16–240) or full range.
    pub fn new(matrix: YuvMatrix, full_range: bool) -> Self {
        let (kr, kb) = match matrix {
            YuvMatrix::Bt601 => (0.299f64, 0.114f64),
            YuvMatrix::Bt709 => (0.2126, 0.0722),
            YuvMatrix::Bt2020 => (0.2627, 0.0593),
        };
        let kg = 1.0 - kr - kb;
        let (ys, cs, y0) = if full_range {
            (255.0, 255.0, 0.0)
        } else {
            (219.0, 224.0, 16.0)
        };
        let (y, c) = (255.0 / ys, 255.0 / cs);
        let m = [
            y,
            0.0,
            2.0 * (1.0 - kr) * c,
            y,
            -2.0 * kb * (1.0 - kb) / kg * c,
            -2.0 * kr * (1.0 - kr) / kg * c,
            y,
            2.0 * (1.0 - kb) * c,
            0.0,
        ];
        Self {
            m: m.map(|v| v as f32),
            off: [y0 as f32, 128.0, 128.0],
        }
    }

    /// The op's second input: the matrix then the offsets.
    pub fn values(&self) -> [f32; 12] {
        let mut v = [0.0; 12];
        v[..9].copy_from_slice(&self.m);
        v[9..].copy_from_slice(&self.off);
        v
    }

    /// The conversion the other way, R'G'B' → Y'CbCr (before the offsets): yuv = f · rgb + off.
    pub fn forward(&self) -> [f32; 9] {
        invert(&self.m)
    }

    fn from_values(v: &[f32]) -> Option<Self> {
        let v: &[f32; 12] = v.try_into().ok()?;
        let mut m = [0.0; 9];
        m.copy_from_slice(&v[..9]);
        Some(Self {
            m,
            off: [v[9], v[10], v[11]],
        })
    }

    /// One pixel: the products and sums in this order, unfused, as the CUDA kernel does them.
    fn rgb(&self, y: u8, u: u8, v: u8) -> [u8; 3] {
        let d = [
            f32::from(y) - self.off[0],
            f32::from(u) - self.off[1],
            f32::from(v) - self.off[2],
        ];
        let m = &self.m;
        let row = |r: usize| {
            let s = m[3 * r] * d[0] + m[3 * r + 1] * d[1] + m[3 * r + 2] * d[2];
            s.round().clamp(0.0, 255.0) as u8
        };
        [row(0), row(1), row(2)]
    }
}

impl Default for Yuv {
    /// BT.709 in limited range: what HD H.264 streams mostly are.
    fn default() -> Self {
        Self::new(YuvMatrix::Bt709, false)
    }
}

/// NV12 (a w x h luma plane, then a (w/2) x (h/2) plane of interleaved U, V; w and h even) to
/// packed RGB into `out` (w * h * 3 bytes).
pub fn nv12_to_rgb(nv12: &[u8], w: usize, h: usize, yuv: &Yuv, out: &mut [u8]) {
    let (luma, chroma) = nv12.split_at(w * h);
    for (r, row) in out.chunks_exact_mut(w * 3).take(h).enumerate() {
        let uv = &chroma[(r / 2) * w..][..w];
        for (c, px) in row.chunks_exact_mut(3).enumerate() {
            let at = c & !1;
            px.copy_from_slice(&yuv.rgb(luma[r * w + c], uv[at], uv[at + 1]));
        }
    }
}

/// Packed RGB to NV12 with `yuv`'s inverse, each 2x2 block's chroma averaged (test frames, and
/// the samples a worker checks the NV12 path with).
pub fn rgb_to_nv12(rgb: &[u8], w: usize, h: usize, yuv: &Yuv) -> Vec<u8> {
    let inv = yuv.forward();
    let to_yuv = |p: &[u8]| -> [f32; 3] {
        let (r, g, b) = (f32::from(p[0]), f32::from(p[1]), f32::from(p[2]));
        [0, 1, 2].map(|k| inv[3 * k] * r + inv[3 * k + 1] * g + inv[3 * k + 2] * b + yuv.off[k])
    };
    let byte = |v: f32| v.round().clamp(0.0, 255.0) as u8;
    let mut out = vec![0u8; w * h * 3 / 2];
    for r in 0..h {
        for c in 0..w {
            out[r * w + c] = byte(to_yuv(&rgb[(r * w + c) * 3..])[0]);
        }
    }
    for r in (0..h).step_by(2) {
        for c in (0..w).step_by(2) {
            let mut s = [0.0f32; 2];
            for (dr, dc) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let v = to_yuv(&rgb[((r + dr) * w + c + dc) * 3..]);
                s[0] += v[1];
                s[1] += v[2];
            }
            let at = w * h + (r / 2) * w + c;
            out[at] = byte(s[0] / 4.0);
            out[at + 1] = byte(s[1] / 4.0);
        }
    }
    out
}

/// The inverse of a 3x3 matrix (rows).
fn invert(m: &[f32; 9]) -> [f32; 9] {
    let m: [f64; 9] = m.map(f64::from);
    let det = m[0] * (m[4] * m[8] - m[5] * m[7]) - m[1] * (m[3] * m[8] - m[5] * m[6])
        + m[2] * (m[3] * m[7] - m[4] * m[6]);
    let a = [
        m[4] * m[8] - m[5] * m[7],
        m[2] * m[7] - m[1] * m[8],
        m[1] * m[5] - m[2] * m[4],
        m[5] * m[6] - m[3] * m[8],
        m[0] * m[8] - m[2] * m[6],
        m[2] * m[3] - m[0] * m[5],
        m[3] * m[7] - m[4] * m[6],
        m[1] * m[6] - m[0] * m[7],
        m[0] * m[4] - m[1] * m[3],
    ];
    a.map(|v| (v / det) as f32)
}

/// X's layout: [N, H, W, 3] RGB, or [N, 3H/2, W, 1] NV12 (H and W even). Returns (images,
/// height, width, nv12); the error names the input.
pub fn dims(x: &[i64]) -> Result<(usize, usize, usize, bool), String> {
    let bad = || {
        format!("input X has shape {x:?}; expected [N, H, W, 3] (RGB) or [N, 3H/2, W, 1] (NV12, H and W even)")
    };
    let &[n, rows, w, c] = x else {
        return Err(bad());
    };
    if [n, rows, w].iter().any(|&d| d < 1) {
        return Err(bad());
    }
    match c {
        3 => Ok((n as usize, rows as usize, w as usize, false)),
        1 if rows % 3 == 0 && w % 2 == 0 => {
            Ok((n as usize, (rows / 3 * 2) as usize, w as usize, true))
        }
        _ => Err(bad()),
    }
}

fn inputs() -> [OperatorInput; 2] {
    [
        OperatorInput::required(TensorElementType::Uint8),
        // Read on the host at each run (12 values), so kept in host memory on a GPU too.
        OperatorInput::optional(TensorElementType::Float32).memory_type(MemoryType::CPUInput),
    ]
}

fn outputs() -> [OperatorOutput; 1] {
    [OperatorOutput::required(TensorElementType::Uint8)]
}

/// The conversion given as input 1 (BT.709 limited without one).
fn yuv_of(ctx: &ComputeContext) -> ort::Result<Yuv> {
    let n = ctx.num_inputs()?;
    let Some(v) = (if n > 1 { ctx.input(1)? } else { None }) else {
        return Ok(Yuv::default());
    };
    let v = v.downcast::<DynTensorValueType>()?;
    let (_, values) = v.try_extract_tensor::<f32>()?;
    Yuv::from_values(values).ok_or_else(|| {
        ort::Error::new(format!(
            "{OP}: input yuv has {} values; expected 12 (a 3x3 matrix, then 3 offsets)",
            values.len()
        ))
    })
}

struct OnCpu;

impl Operator for OnCpu {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        OP
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        inputs()
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        outputs()
    }

    fn create_kernel<'attr>(&self, _: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        Ok(Box::new(move |ctx: &ComputeContext| {
            let x = ctx
                .input(0)?
                .ok_or_else(|| ort::Error::new(format!("{OP}: no input X")))?
                .downcast::<DynTensorValueType>()?;
            let (n, h, w, nv12) =
                dims(x.shape()).map_err(|e| ort::Error::new(format!("{OP}: {e}")))?;
            let yuv = yuv_of(ctx)?;
            let y = ctx
                .output(0, vec![n as i64, h as i64, w as i64, 3])?
                .ok_or_else(|| ort::Error::new(format!("{OP}: no output")))?
                .downcast::<DynTensorValueType>()?;
            // SAFETY: X and Y are CPU u8 tensors; ONNX Runtime has just allocated Y.
            let (xs, ys) = unsafe { (host_values::<u8>(&x), host_values_mut::<u8>(&y)) };
            if !nv12 {
                ys.copy_from_slice(xs);
                return Ok(());
            }
            for (xi, yi) in xs
                .chunks_exact(h * w * 3 / 2)
                .zip(ys.chunks_exact_mut(h * w * 3))
            {
                nv12_to_rgb(xi, w, h, &yuv, yi);
            }
            Ok(())
        }))
    }
}

struct OnCuda;

impl Operator for OnCuda {
    type Kernel<'attr> = CudaPixels;

    fn name(&self) -> &str {
        OP
    }

    fn execution_provider_type(&self) -> Option<&str> {
        Some("CUDAExecutionProvider")
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        inputs()
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        outputs()
    }

    fn create_kernel<'attr>(&self, _: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        Ok(CudaPixels { kernels: None })
    }
}

struct CudaPixels {
    /// The device's loaded kernels, from the first run on.
    kernels: Option<(i32, crate::cuda::NormKernels)>,
}

impl Kernel for CudaPixels {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let x = ctx
            .input(0)?
            .ok_or_else(|| ort::Error::new(format!("{OP}: no input X")))?
            .downcast::<DynTensorValueType>()?;
        let (n, h, w, nv12) = dims(x.shape()).map_err(|e| ort::Error::new(format!("{OP}: {e}")))?;
        let yuv = yuv_of(ctx)?;
        let (stream, device, kernels) = cuda_run(ctx, &x, &mut self.kernels, OP)?;
        let y = ctx
            .output(0, vec![n as i64, h as i64, w as i64, 3])?
            .ok_or_else(|| ort::Error::new(format!("{OP}: no output")))?
            .downcast::<DynTensorValueType>()?;
        // SAFETY: the session's stream on the tensors' device; X and Y are ONNX Runtime's u8
        // tensors there of these shapes, alive until the stream has run the kernel.
        unsafe {
            crate::cuda::launch_pixels(
                &kernels,
                stream,
                (n, h, w, nv12),
                &yuv,
                x.data_ptr() as u64,
                y.data_ptr() as u64,
            )
        }
        .map_err(|e| ort::Error::new(format!("{OP} on GPU {device}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_limited_and_full_range_and_back() {
        let bt709 = Yuv::default();
        // Limited range: 16 is black, 235 white, the chroma midpoints grey.
        assert_eq!(bt709.rgb(16, 128, 128), [0, 0, 0]);
        assert_eq!(bt709.rgb(235, 128, 128), [255, 255, 255]);
        assert_eq!(bt709.rgb(126, 128, 128), [128, 128, 128]);
        // BT.709 red (limited): Y 63, Cb 102, Cr 240.
        let red = bt709.rgb(63, 102, 240);
        assert!(red[0] >= 253 && red[1] <= 2 && red[2] <= 2, "{red:?}");
        let full = Yuv::new(YuvMatrix::Bt601, true);
        assert_eq!(full.rgb(0, 128, 128), [0, 0, 0]);
        assert_eq!(full.rgb(255, 128, 128), [255, 255, 255]);
        // A 4x2 picture through NV12 and back: flat 2x2 blocks come back within a level or two.
        let (w, h) = (4, 2);
        let rgb: Vec<u8> = [
            [200u8, 30, 40],
            [200, 30, 40],
            [10, 120, 250],
            [10, 120, 250],
        ]
        .iter()
        .cycle()
        .take(w * h)
        .flatten()
        .copied()
        .collect();
        let nv12 = rgb_to_nv12(&rgb, w, h, &bt709);
        assert_eq!(nv12.len(), w * h * 3 / 2);
        let mut back = vec![0u8; w * h * 3];
        nv12_to_rgb(&nv12, w, h, &bt709, &mut back);
        let worst = rgb
            .iter()
            .zip(&back)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(0);
        assert!(worst <= 2, "{rgb:?} -> {back:?}");
        assert_eq!(Yuv::from_values(&bt709.values()), Some(bt709));
    }

    #[test]
    fn dims_tell_rgb_from_nv12() {
        assert_eq!(dims(&[2, 720, 1280, 3]).unwrap(), (2, 720, 1280, false));
        assert_eq!(dims(&[1, 1080, 1280, 1]).unwrap(), (1, 720, 1280, true));
        for bad in [
            &[1, 1080, 1281, 1][..],
            &[1, 1081, 1280, 1],
            &[1, 6, 4, 2],
            &[1, 6, 4],
        ] {
            assert!(dims(bad).unwrap_err().contains("input X"), "{bad:?}");
        }
    }
}
