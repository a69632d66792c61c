//! framewise's op `ai.framewise:ReflectPad` (and `ReflectPadHalf` for fp16): ONNX Pad in
//! reflect mode along H and W of a channels-last tensor [N, H, W, C]. In the channels-last fp16
//! model the Pads after the residual blocks' skip connections (which feed two ops, so the
//! fused normalisation cannot write them) ran as ONNX Runtime's generic pad kernel, half of the
//! GPU time (BENCHMARKS.md, session 12); this one copies whole pixels, 16 bytes at a time.
//! With the attribute `space_to_depth_out` = K it writes the padded image space to depth
//! ([N, ceil(H'/2), ceil(W'/2), 4C], norm_op::pixel_at; an odd side's extra row or column is
//! zeros): the input of the first 9x9 convolution run as a 5x5 one (`optimize::space_to_depth`).

use crate::norm_op::{
    cuda_run, host_values, host_values_mut, pixel_at, read_pads, reflect, Pads, DOMAIN,
};
use ort::memory::MemoryType;
use ort::operator::{
    BoxedKernel, ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput,
    OperatorOutput,
};
use ort::value::{DynTensorValueType, TensorElementType};

/// The op's name for f32 values.
pub const OP: &str = "ReflectPad";
/// The op's name for f16 values.
pub const OP_HALF: &str = "ReflectPadHalf";

/// Adds the op, both element types, CPU and CUDA, to framewise's domain.
pub(crate) fn add_to(d: OperatorDomain) -> ort::Result<OperatorDomain> {
    debug_assert_eq!(DOMAIN, "ai.framewise");
    d.add(OnCpu { half: false })?
        .add(OnCuda { half: false })?
        .add(OnCpu { half: true })?
        .add(OnCuda { half: true })
}

/// X's dimensions [N, H, W, C], checked against the pads (reflection stays inside H and W).
pub fn dims(x: &[i64], p: Pads) -> Result<[usize; 4], String> {
    let &[n, h, w, c] = x else {
        return Err(format!("input X has shape {x:?}; expected [N, H, W, C]"));
    };
    if [n, h, w, c].iter().any(|&d| d < 1) {
        return Err(format!("input X has shape {x:?}: an empty dimension"));
    }
    if p.top.max(p.bottom) as i64 >= h || p.left.max(p.right) as i64 >= w {
        return Err(format!(
            "pads {p:?} reflect beyond X's {h}x{w} planes (at most {} and {})",
            h - 1,
            w - 1
        ));
    }
    Ok([n, h, w, c].map(|d| d as usize))
}

/// The output's shape (space to depth: [N, ceil(H'/2), ceil(W'/2), 4C]).
pub fn out_shape(d: [usize; 4], p: Pads, s2d: bool) -> Vec<i64> {
    let [n, h, w, c] = d;
    let (oh, ow) = (h + p.top + p.bottom, w + p.left + p.right);
    let s = if s2d {
        [n, oh.div_ceil(2), ow.div_ceil(2), 4 * c]
    } else {
        [n, oh, ow, c]
    };
    s.iter().map(|&v| v as i64).collect()
}

/// The CPU kernel: rows copied whole, their reflected edges pixel by pixel (space to depth:
/// pixel by pixel, an odd side's extra row and column `zero`). Any element type.
pub fn reflect_pad<T: Copy>(x: &[T], y: &mut [T], d: [usize; 4], p: Pads, s2d: Option<T>) {
    let [_, h, w, c] = d;
    let ow = w + p.left + p.right;
    let oh = h + p.top + p.bottom;
    if let Some(zero) = s2d {
        let (rows, cols) = (oh.next_multiple_of(2), ow.next_multiple_of(2));
        for (xi, yi) in x
            .chunks_exact(h * w * c)
            .zip(y.chunks_exact_mut(rows * cols * c))
        {
            for r in 0..rows {
                for col in 0..cols {
                    let out = &mut yi[pixel_at(r, col, cols, true) * c..][..c];
                    if r >= oh || col >= ow {
                        out.fill(zero);
                    } else {
                        let sr = reflect(r as i64 - p.top as i64, h);
                        let sc = reflect(col as i64 - p.left as i64, w);
                        out.copy_from_slice(&xi[(sr * w + sc) * c..][..c]);
                    }
                }
            }
        }
        return;
    }
    for (xi, yi) in x
        .chunks_exact(h * w * c)
        .zip(y.chunks_exact_mut(oh * ow * c))
    {
        for (r, row) in yi.chunks_exact_mut(ow * c).enumerate() {
            let src = &xi[reflect(r as i64 - p.top as i64, h) * w * c..][..w * c];
            row[p.left * c..(p.left + w) * c].copy_from_slice(src);
            for col in (0..p.left).chain(p.left + w..ow) {
                let s = reflect(col as i64 - p.left as i64, w) * c;
                row[col * c..(col + 1) * c].copy_from_slice(&src[s..s + c]);
            }
        }
    }
}

/// The attribute `space_to_depth_out`, checked against the pads.
fn space_to_depth(k: &KernelContext<'_>, pads: Pads) -> ort::Result<bool> {
    crate::norm_op::space_to_depth_out(k, pads).map_err(|e| ort::Error::new(format!("{OP}: {e}")))
}

fn name(half: bool) -> &'static str {
    if half {
        OP_HALF
    } else {
        OP
    }
}

fn inputs(half: bool) -> [OperatorInput; 2] {
    [
        OperatorInput::required(element(half)),
        // Read once when the kernel is made, so kept in host memory on a GPU too.
        OperatorInput::required(TensorElementType::Int64).memory_type(MemoryType::CPUInput),
    ]
}

fn outputs(half: bool) -> [OperatorOutput; 1] {
    [OperatorOutput::required(element(half))]
}

fn element(half: bool) -> TensorElementType {
    if half {
        TensorElementType::Float16
    } else {
        TensorElementType::Float32
    }
}

/// Bytes per value of the op's element type.
fn elem_bytes(half: bool) -> usize {
    if half {
        2
    } else {
        4
    }
}

struct OnCpu {
    half: bool,
}

impl Operator for OnCpu {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        name(self.half)
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        inputs(self.half)
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        outputs(self.half)
    }

    fn create_kernel<'attr>(&self, k: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let (pads, half) = (read_pads(k, 1, OP)?, self.half);
        let s2d = space_to_depth(k, pads)?;
        Ok(Box::new(move |ctx: &ComputeContext| {
            let x = ctx
                .input(0)?
                .ok_or_else(|| ort::Error::new(format!("{OP}: no input X")))?
                .downcast::<DynTensorValueType>()?;
            let d = dims(x.shape(), pads).map_err(|e| ort::Error::new(format!("{OP}: {e}")))?;
            let y = ctx
                .output(0, out_shape(d, pads, s2d))?
                .ok_or_else(|| ort::Error::new(format!("{OP}: no output")))?
                .downcast::<DynTensorValueType>()?;
            // SAFETY: X and Y are CPU tensors of the op's element type (f32, or f16 as u16:
            // same size and alignment); ONNX Runtime has just allocated Y.
            unsafe {
                if half {
                    let (x, y) = (host_values::<u16>(&x), host_values_mut::<u16>(&y));
                    reflect_pad(x, y, d, pads, s2d.then_some(0));
                } else {
                    let (x, y) = (host_values::<f32>(&x), host_values_mut::<f32>(&y));
                    reflect_pad(x, y, d, pads, s2d.then_some(0.0));
                }
            }
            Ok(())
        }))
    }
}

struct OnCuda {
    half: bool,
}

impl Operator for OnCuda {
    type Kernel<'attr> = CudaPad;

    fn name(&self) -> &str {
        name(self.half)
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
        let pads = read_pads(k, 1, OP)?;
        Ok(CudaPad {
            pads,
            half: self.half,
            s2d: space_to_depth(k, pads)?,
            kernels: None,
        })
    }
}

struct CudaPad {
    pads: Pads,
    half: bool,
    s2d: bool,
    /// The device's loaded kernels, from the first run on.
    kernels: Option<(i32, crate::cuda::NormKernels)>,
}

impl Kernel for CudaPad {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let x = ctx
            .input(0)?
            .ok_or_else(|| ort::Error::new(format!("{OP}: no input X")))?
            .downcast::<DynTensorValueType>()?;
        let d = dims(x.shape(), self.pads).map_err(|e| ort::Error::new(format!("{OP}: {e}")))?;
        let (stream, device, kernels) = cuda_run(ctx, &x, &mut self.kernels, OP)?;
        let y = ctx
            .output(0, out_shape(d, self.pads, self.s2d))?
            .ok_or_else(|| ort::Error::new(format!("{OP}: no output")))?
            .downcast::<DynTensorValueType>()?;
        let [images, in_h, in_w, channels] = d;
        let plan = crate::cuda::PadPlan {
            images,
            in_h,
            in_w,
            channels,
            elem: elem_bytes(self.half),
            pads: self.pads,
            s2d: self.s2d,
        };
        // SAFETY: the session's stream on the tensors' device; X and Y are ONNX Runtime's
        // tensors there of the plan's shapes, alive until the stream has run the kernel.
        unsafe {
            crate::cuda::launch_pad(
                &kernels,
                stream,
                &plan,
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
    fn pads_rows_and_edges_by_reflection() {
        // [1, 2, 3, 2]: two rows of three two-channel pixels, padded 1 on every side.
        let x: Vec<u16> = (0..12).collect();
        let p = Pads::uniform(1);
        let d = dims(&[1, 2, 3, 2], p).unwrap();
        assert_eq!(out_shape(d, p, false), [1, 4, 5, 2]);
        let mut y = vec![0u16; 40];
        reflect_pad(&x, &mut y, d, p, None);
        // Row 0 reflects to input row 1, row 3 to input row 0; columns 0 and 4 to 1 and 1.
        let px = |r: usize, c: usize| [y[(r * 5 + c) * 2], y[(r * 5 + c) * 2 + 1]];
        assert_eq!(px(1, 1), [0, 1]);
        assert_eq!(px(1, 0), [2, 3]);
        assert_eq!(px(1, 4), [2, 3]);
        assert_eq!(px(0, 1), [6, 7]);
        assert_eq!(px(3, 3), [4, 5]);
        assert_eq!(px(2, 3), [10, 11]);
        let e = dims(&[1, 2, 3, 2], Pads { top: 2, ..p }).unwrap_err();
        assert!(e.contains("reflect beyond"), "{e}");
        assert!(dims(&[1, 2, 3], p).unwrap_err().contains("[N, H, W, C]"));
        // Space to depth: the same 4x5 image as 2x3 blocks of 2x2 pixels, the sixth column
        // zeros; pixel (3, 2) is in block (1, 1) (the fifth), at (1, 0) in it: stored pixel 18.
        assert_eq!(out_shape(d, p, true), [1, 2, 3, 8]);
        let mut s = vec![99u16; 48];
        reflect_pad(&x, &mut s, d, p, Some(0));
        for r in 0..4 {
            for col in 0..6 {
                let at = pixel_at(r, col, 6, true) * 2;
                let want = if col < 5 { px(r, col) } else { [0, 0] };
                assert_eq!([s[at], s[at + 1]], want, "{r} {col}");
            }
        }
        assert_eq!(pixel_at(3, 2, 6, true), 18);
    }
}
