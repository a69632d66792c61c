//! What framewise's CPU-only ops (conv_op.rs, narrow_conv_op.rs) share around their maths:
//! constant inputs read once when the kernel is made, and a kernel of one input X and one f32
//! output Y [N, M, H', W'] with scratch kept between runs.

use crate::norm_op::{host_values, host_values_mut};
use ort::operator::{BoxedKernel, ComputeContext, KernelContext};
use ort::value::{DynTensorValueType, ValueRef};
use std::sync::Mutex;

/// Input `i` of the node, which must be a constant (weights, scale, bias).
pub fn constant<'a>(
    k: &KernelContext<'a>,
    op: &str,
    i: usize,
    what: &str,
) -> ort::Result<ValueRef<'a, DynTensorValueType>> {
    k.constant_input::<DynTensorValueType>(i)
        .map_err(|e| ort::Error::new(format!("{op}: {what} (input {i}) must be a constant: {e}")))
}

/// The kernel: Y's shape from X's (`shape`, an error names the problem), then
/// `run(x, x_dims, y, scratch)`. X's element type is `T` (a CPU tensor of it).
pub fn kernel<'a, T: 'a, S: Send + 'a>(
    op: &'static str,
    shape: impl Fn(&[i64]) -> Result<[usize; 4], String> + Send + 'a,
    run: impl Fn(&[T], [usize; 4], &mut [f32], &mut Vec<S>) + Send + 'a,
) -> BoxedKernel<'a> {
    let err = move |e: &dyn std::fmt::Display| ort::Error::new(format!("{op}: {e}"));
    let scratch = Mutex::new(Vec::new());
    Box::new(move |ctx: &ComputeContext| {
        let x = ctx
            .input(0)?
            .ok_or_else(|| err(&"no input X"))?
            .downcast::<DynTensorValueType>()?;
        let out = shape(x.shape()).map_err(|e| err(&e))?;
        let d: Vec<usize> = x.shape().iter().map(|&v| v as usize).collect();
        let y = ctx
            .output(0, out.iter().map(|&v| v as i64).collect::<Vec<_>>())?
            .ok_or_else(|| err(&"no output"))?
            .downcast::<DynTensorValueType>()?;
        let mut scratch = scratch.lock().map_err(|_| err(&"scratch lock poisoned"))?;
        // SAFETY: X is a CPU tensor of T (the op's declared input type) and Y the CPU f32
        // tensor ONNX Runtime has just allocated; `shape` checked X has four dimensions.
        unsafe {
            run(
                host_values::<T>(&x),
                [d[0], d[1], d[2], d[3]],
                host_values_mut::<f32>(&y),
                &mut scratch,
            );
        }
        Ok(())
    })
}
