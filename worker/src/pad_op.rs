//! framewise's op `ai.framewise:ReflectPad` (and `ReflectPadHalf` for fp16): ONNX Pad in
//! reflect mode along H and W of a channels-last tensor [N, H, W, C]. In the channels-last fp16
//! model the Pads after the residual blocks' skip connections (which feed two ops, so the
//! fused normalisation cannot write them) ran as ONNX Runtime's generic pad kernel, half of the
//! GPU time (BENCHMARKS.md, session 12); this one copies whole pixels, 16 bytes at a time.

use crate::norm_op::{host_values, host_values_mut, read_pads, reflect, Pads, DOMAIN};
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

/// The output's shape.
pub fn out_shape(d: [usize; 4], p: Pads) -> Vec<i64> {
    let [n, h, w, c] = d;
    [n, h + p.top + p.bottom, w + p.left + p.right, c]
        .iter()
        .map(|&v| v as i64)
        .collect()
}

/// The CPU kernel: rows copied whole, their reflected edges pixel by pixel. Any element type.
pub fn reflect_pad<T: Copy>(x: &[T], y: &mut [T], d: [usize; 4], p: Pads) {
    let [_, h, w, c] = d;
    let ow = w + p.left + p.right;
    let oh = h + p.top + p.bottom;
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
        Ok(Box::new(move |ctx: &ComputeContext| {
            let x = ctx
                .input(0)?
                .ok_or_else(|| ort::Error::new(format!("{OP}: no input X")))?
                .downcast::<DynTensorValueType>()?;
            let d = dims(x.shape(), pads).map_err(|e| ort::Error::new(format!("{OP}: {e}")))?;
            let y = ctx
                .output(0, out_shape(d, pads))?
                .ok_or_else(|| ort::Error::new(format!("{OP}: no output")))?
                .downcast::<DynTensorValueType>()?;
            // SAFETY: X and Y are CPU tensors of the op's element type (f32, or f16 as u16:
            // same size and alignment); ONNX Runtime has just allocated Y.
            unsafe {
                if half {
                    reflect_pad(host_values::<u16>(&x), host_values_mut::<u16>(&y), d, pads);
                } else {
                    reflect_pad(host_values::<f32>(&x), host_values_mut::<f32>(&y), d, pads);
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
        Ok(CudaPad {
            pads: read_pads(k, 1, OP)?,
            half: self.half,
            kernels: None,
        })
    }
}

struct CudaPad {
    pads: Pads,
    half: bool,
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
        let stream = ctx
            .stream()?
            .ok_or_else(|| ort::Error::new(format!("{OP}: no CUDA stream")))?;
        let device = x.memory_info().device_id();
        let kernels = crate::cuda::NormKernels::cached(&mut self.kernels, device)
            .map_err(|e| ort::Error::new(format!("{OP} on GPU {device}: {e}")))?;
        let y = ctx
            .output(0, out_shape(d, self.pads))?
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
        };
        // SAFETY: the session's stream on the tensors' device; X and Y are ONNX Runtime's
        // tensors there of the plan's shapes, alive until the stream has run the kernel.
        unsafe {
            crate::cuda::launch_pad(
                &kernels,
                stream.as_ptr(),
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
        let p = Pads {
            top: 1,
            left: 1,
            bottom: 1,
            right: 1,
        };
        let d = dims(&[1, 2, 3, 2], p).unwrap();
        assert_eq!(out_shape(d, p), [1, 4, 5, 2]);
        let mut y = vec![0u16; 40];
        reflect_pad(&x, &mut y, d, p);
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
    }
}
