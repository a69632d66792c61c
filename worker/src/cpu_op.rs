//! What framewise's CPU-only convolution ops (conv_op.rs, narrow_conv_op.rs) share around
//! their maths: the shape checks of a K x K convolution over a reflect-padded image, constant
//! inputs read once when the kernel is made, and a kernel of one input X and one f32 output Y
//! [N, M, H', W'] with scratch kept between runs.

use crate::norm_op::{host_values, host_values_mut, Pads};
use ort::operator::{BoxedKernel, ComputeContext, KernelContext};
use ort::value::{DynTensorValueType, PrimitiveTensorElementType};
use std::sync::Mutex;

/// A convolution an op runs: its output's shape from X's, and the run itself.
pub trait CpuConv: Send + 'static {
    /// X's element type.
    type X;
    /// What a run keeps between runs (its padded planes).
    type Scratch: Send;
    /// Y's shape for X's, or an error that names the problem.
    fn out_shape(&self, x: &[i64]) -> Result<[usize; 4], String>;
    /// Runs on X (`x_dims` as given) into Y (`out_shape`).
    fn run(
        &self,
        x: &[Self::X],
        x_dims: [usize; 4],
        y: &mut [f32],
        scratch: &mut Vec<Self::Scratch>,
    );
}

/// W's shape [M, C, K, K] (a square kernel, no empty dimension) holding `len` values: M, C, K.
pub fn square_weights(dims: &[i64], len: usize) -> Result<[usize; 3], String> {
    let &[m, c, kh, kw] = dims else {
        return Err(format!(
            "weights W have shape {dims:?}; expected [M, C, K, K]"
        ));
    };
    if m < 1 || c < 1 || kh < 1 || kh != kw {
        return Err(format!(
            "weights W have shape {dims:?}; expected a square kernel and no empty dimension"
        ));
    }
    let [m, c, k] = [m, c, kh].map(|d| d as usize);
    if len != m * c * k * k {
        return Err(format!("weights W hold {len} values for shape {dims:?}"));
    }
    Ok([m, c, k])
}

/// X's four dimensions (`names` says their order), none empty.
pub fn four_dims(x: &[i64], names: &str) -> Result<[usize; 4], String> {
    let &[a, b, c, d] = x else {
        return Err(format!("input X has shape {x:?}; expected {names}"));
    };
    if [a, b, c, d].iter().any(|&v| v < 1) {
        return Err(format!("input X has shape {x:?}: an empty dimension"));
    }
    Ok([a, b, c, d].map(|v| v as usize))
}

/// The output rows and columns of a K x K convolution over an H x W image of `channels`
/// (the weights take `want`), reflect-padded by `pads`: checked that the padding reflects
/// inside the image and the padded image holds the kernel.
pub fn padded_out(
    [h, w]: [usize; 2],
    channels: usize,
    want: usize,
    k: usize,
    p: Pads,
) -> Result<[usize; 2], String> {
    if channels != want {
        return Err(format!(
            "input X has {channels} channels; the weights take {want}"
        ));
    }
    if p.top.max(p.bottom) >= h || p.left.max(p.right) >= w {
        return Err(format!(
            "pads {p:?} reflect beyond the {h}x{w} image (at most {} and {})",
            h - 1,
            w - 1
        ));
    }
    let (ph, pw) = (h + p.top + p.bottom, w + p.left + p.right);
    if ph < k || pw < k {
        return Err(format!(
            "the padded {ph}x{pw} image is smaller than the {k}x{k} kernel"
        ));
    }
    Ok([ph - k + 1, pw - k + 1])
}

/// Input `i` of the node, which must be a constant (weights, scale, bias): its shape and
/// values.
pub fn constant<T: PrimitiveTensorElementType + Clone>(
    k: &KernelContext<'_>,
    op: &str,
    i: usize,
    what: &str,
) -> ort::Result<(Vec<i64>, Vec<T>)> {
    let t = k.constant_input::<DynTensorValueType>(i).map_err(|e| {
        ort::Error::new(format!("{op}: {what} (input {i}) must be a constant: {e}"))
    })?;
    let (dims, values) = t.try_extract_tensor::<T>()?;
    Ok((dims.iter().copied().collect(), values.to_vec()))
}

/// The kernel that runs `conv`: Y's shape from X's (an error names the problem), then the run.
pub fn kernel<'a, C: CpuConv>(op: &'static str, conv: C) -> BoxedKernel<'a> {
    let err = move |e: &dyn std::fmt::Display| ort::Error::new(format!("{op}: {e}"));
    let scratch = Mutex::new(Vec::new());
    Box::new(move |ctx: &ComputeContext| {
        let x = ctx
            .input(0)?
            .ok_or_else(|| err(&"no input X"))?
            .downcast::<DynTensorValueType>()?;
        let out = conv.out_shape(x.shape()).map_err(|e| err(&e))?;
        let d: Vec<usize> = x.shape().iter().map(|&v| v as usize).collect();
        let y = ctx
            .output(0, out.iter().map(|&v| v as i64).collect::<Vec<_>>())?
            .ok_or_else(|| err(&"no output"))?
            .downcast::<DynTensorValueType>()?;
        let mut scratch = scratch.lock().map_err(|_| err(&"scratch lock poisoned"))?;
        // SAFETY: X is a CPU tensor of C::X (the op's declared input type) and Y the CPU f32
        // tensor ONNX Runtime has just allocated; `out_shape` checked X has four dimensions.
        unsafe {
            conv.run(
                host_values::<C::X>(&x),
                [d[0], d[1], d[2], d[3]],
                host_values_mut::<f32>(&y),
                &mut scratch,
            );
        }
        Ok(())
    })
}
