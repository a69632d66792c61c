//! CUDA graph runs (`worker.cuda_graph`): ONNX Runtime captures a session's kernels once per
//! input shape and then replays them with one launch per frame, instead of launching each of
//! the model's ~100 kernels through its executor. A replay reads and writes the addresses it
//! was captured with, so every input and the output are bound to device buffers that stay put;
//! frames go in and out through pinned host buffers (cuda.rs).
//!
//! What a graph bakes in: the image's shape and the NV12 conversion's coefficients (framewise's
//! `PixelsIn` reads them on the host, so they become kernel arguments). Both are part of a
//! graph's key. The style weights and any extra inputs live in device buffers and are copied
//! whenever they change.

use crate::cuda::Pinned;
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, NoSelectedOutputs, RunOptions, Session};
use ort::value::Tensor;

/// Shapes (and NV12 coefficients) a session keeps a graph for; runs beyond them go without one.
pub const MAX_GRAPHS: usize = 4;

/// ONNX Runtime's run option naming the graph a run captures or replays (-1: none).
const GRAPH_ID: &str = "gpu_graph_id";

/// The options for a run outside any graph on a session created with graphs enabled (without
/// them ONNX Runtime would try to capture graph 0 from host inputs).
pub fn plain_options() -> Result<RunOptions<NoSelectedOutputs>, String> {
    let mut o = RunOptions::new().map_err(|e| e.to_string())?;
    o.set(GRAPH_ID, "-1").map_err(|e| e.to_string())?;
    Ok(o)
}

/// A run's inputs as the graph path takes them.
pub struct GraphInputs<'a> {
    /// The image input's name, shape and bytes (NV12 or RGB, as the session takes it).
    pub image: (&'a str, [usize; 4], &'a [u8]),
    /// The NV12 conversion's input and its 12 coefficients (read on the host by `PixelsIn`).
    pub yuv: Option<(&'a str, [f32; 12])>,
    /// Float inputs read on the GPU (style weights, extra inputs), by name.
    pub floats: &'a [(&'a str, &'a [f32])],
    /// The output's name and shape (uint8).
    pub output: (&'a str, [usize; 4]),
}

/// What a graph was captured for: a run that differs in any of it needs another graph.
#[derive(Debug, Clone, PartialEq)]
struct Key {
    shape: [usize; 4],
    /// The NV12 coefficients' bits (baked into the conversion's launch).
    yuv: Option<[u32; 12]>,
    /// The float inputs' names, in binding order.
    names: Vec<String>,
}

impl Key {
    fn of(i: &GraphInputs) -> Self {
        Self {
            shape: i.image.1,
            yuv: i.yuv.map(|(_, v)| v.map(f32::to_bits)),
            names: i.floats.iter().map(|(n, _)| n.to_string()).collect(),
        }
    }

    /// Whether `i` can replay this key's graph (no allocation: runs check it every frame).
    fn matches(&self, i: &GraphInputs) -> bool {
        self.shape == i.image.1
            && self.yuv == i.yuv.map(|(_, v)| v.map(f32::to_bits))
            && self.names.len() == i.floats.len()
            && self.names.iter().zip(i.floats).all(|(a, (n, _))| a == n)
    }
}

/// One captured graph with the buffers it reads and writes.
struct Bound {
    key: Key,
    options: RunOptions<NoSelectedOutputs>,
    binding: IoBinding,
    image: Tensor<u8>,
    /// Device buffers of the float inputs and the values last copied into them.
    floats: Vec<(Tensor<f32>, Vec<f32>)>,
    output: Tensor<u8>,
    out_len: usize,
    staging_in: Pinned,
    staging_out: Pinned,
}

/// A session's graphs, by shape; owned by the session's `Stylizer`.
pub struct GraphRuns {
    device: i32,
    sets: Vec<Bound>,
}

impl GraphRuns {
    /// Graphs for a session on GPU `device`.
    pub fn new(device: u32) -> Self {
        Self {
            device: device as i32,
            sets: Vec::new(),
        }
    }

    /// Runs `session` through the graph for these inputs (made on first use: ONNX Runtime
    /// runs it normally twice, then captures it); returns the output's bytes, or None when the
    /// session already keeps MAX_GRAPHS other graphs (the caller runs it without one).
    pub fn run<'s>(
        &'s mut self,
        session: &mut Session,
        i: &GraphInputs,
    ) -> Result<Option<&'s [u8]>, String> {
        let k = match self.sets.iter().position(|b| b.key.matches(i)) {
            Some(k) => k,
            None => {
                if self.sets.len() >= MAX_GRAPHS {
                    return Ok(None);
                }
                let id = self.sets.len() as i32 + 1;
                let b = Bound::new(session, self.device, id, i)?;
                tracing::debug!(gpu = self.device, graph = id, shape = ?i.image.1, "CUDA graph buffers bound");
                self.sets.push(b);
                self.sets.len() - 1
            }
        };
        let b = &mut self.sets[k];
        let (_, _, bytes) = i.image;
        if bytes.len() != b.image_len() {
            return Err(format!(
                "{} image bytes for shape {:?}",
                bytes.len(),
                b.key.shape
            ));
        }
        b.staging_in.bytes_mut()[..bytes.len()].copy_from_slice(bytes);
        // SAFETY: the image tensor is a live device buffer of this size on the staging
        // buffer's GPU; the previous run has finished (runs synchronise their stream).
        unsafe {
            b.staging_in
                .to_device(b.image.data_ptr() as u64, bytes.len())?
        };
        for ((t, last), (name, v)) in b.floats.iter_mut().zip(i.floats) {
            if last.as_slice() == *v {
                continue;
            }
            if v.len() != last.len() {
                return Err(format!(
                    "input {name}: {} values, bound with {}",
                    v.len(),
                    last.len()
                ));
            }
            let raw: Vec<u8> = v.iter().flat_map(|x| x.to_ne_bytes()).collect();
            b.staging_in.bytes_mut()[..raw.len()].copy_from_slice(&raw);
            // SAFETY: as for the image; the tensor holds v.len() floats.
            unsafe { b.staging_in.to_device(t.data_ptr() as u64, raw.len())? };
            last.copy_from_slice(v);
        }
        session
            .run_binding_with_options(&b.binding, &b.options)
            .map_err(|e| format!("CUDA graph run: {e}"))?;
        // SAFETY: the output tensor is out_len bytes on this GPU, written by the run that just
        // returned (ONNX Runtime synchronised its stream).
        unsafe {
            b.staging_out
                .from_device(b.output.data_ptr() as u64, b.out_len)?
        };
        Ok(Some(&b.staging_out.bytes()[..b.out_len]))
    }
}

impl Bound {
    fn new(session: &Session, device: i32, id: i32, i: &GraphInputs) -> Result<Self, String> {
        let e = |what: &str, err: ort::Error| format!("CUDA graph {what}: {err}");
        let info = MemoryInfo::new(
            AllocationDevice::CUDA,
            device,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .map_err(|x| e("memory info", x))?;
        let alloc = Allocator::new(session, info).map_err(|x| e("allocator", x))?;
        let mut binding = session.create_binding().map_err(|x| e("binding", x))?;
        let (image_name, shape, _) = i.image;
        let image = Tensor::<u8>::new(&alloc, shape).map_err(|x| e("image buffer", x))?;
        binding
            .bind_input(image_name, &image)
            .map_err(|x| e("image input", x))?;
        if let Some((name, v)) = i.yuv {
            // On the host: PixelsIn reads it there (a CPU input), so it is captured as values.
            let t = Tensor::from_array(([12usize], v.to_vec())).map_err(|x| e("yuv", x))?;
            binding
                .bind_input(name, &t)
                .map_err(|x| e("yuv input", x))?;
        }
        let mut floats = Vec::with_capacity(i.floats.len());
        let mut largest = shape.iter().product::<usize>();
        for (name, v) in i.floats {
            let t = Tensor::<f32>::new(&alloc, [v.len()]).map_err(|x| e(name, x))?;
            binding.bind_input(*name, &t).map_err(|x| e(name, x))?;
            largest = largest.max(v.len() * 4);
            // NaN never equals: the first run copies the real values.
            floats.push((t, vec![f32::NAN; v.len()]));
        }
        let (out_name, out_shape) = i.output;
        let mut output = Tensor::<u8>::new(&alloc, out_shape).map_err(|x| e("output buffer", x))?;
        binding
            .bind_output(out_name, &mut output)
            .map_err(|x| e("output", x))?;
        let mut options = RunOptions::new().map_err(|x| e("run options", x))?;
        options
            .set(GRAPH_ID, id.to_string())
            .map_err(|x| e("run options", x))?;
        let out_len = out_shape.iter().product();
        Ok(Self {
            key: Key::of(i),
            options,
            binding,
            image,
            floats,
            output,
            out_len,
            staging_in: Pinned::new(device, largest)?,
            staging_out: Pinned::new(device, out_len)?,
        })
    }

    fn image_len(&self) -> usize {
        self.key.shape.iter().product()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>(
        shape: [usize; 4],
        yuv: Option<f32>,
        floats: &'a [(&'a str, &'a [f32])],
    ) -> GraphInputs<'a> {
        GraphInputs {
            image: ("image", shape, &[]),
            yuv: yuv.map(|v| ("image__fw_yuv", [v; 12])),
            floats,
            output: ("stylized", [shape[0], 720, 1280, 3]),
        }
    }

    #[test]
    fn a_graph_is_kept_per_shape_and_conversion_not_per_style() {
        let (a, b) = ([0.5f32, 0.5], [1.0f32, 0.0]);
        let (fa, fb) = ([("style", &a[..])], [("style", &b[..])]);
        let k = Key::of(&inputs([1, 1080, 1280, 1], Some(0.25), &fa));
        // New style weights are copied into the bound buffer: the same graph.
        assert!(k.matches(&inputs([1, 1080, 1280, 1], Some(0.25), &fb)));
        // Another size, batch, colour conversion or set of inputs: another graph.
        assert!(!k.matches(&inputs([1, 720, 1280, 3], None, &fa)));
        assert!(!k.matches(&inputs([2, 1080, 1280, 1], Some(0.25), &fa)));
        assert!(!k.matches(&inputs([1, 1080, 1280, 1], Some(0.5), &fa)));
        let more = [("style", &a[..]), ("extra", &a[..])];
        assert!(!k.matches(&inputs([1, 1080, 1280, 1], Some(0.25), &more)));
    }

    #[test]
    fn runs_outside_a_graph_say_so() {
        // ONNX Runtime would otherwise capture graph 0 from host inputs on a graph session.
        let lib = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../.deps/onnxruntime/libonnxruntime.so.1.32.0");
        crate::inference::runtime(&lib).unwrap();
        let mut o = plain_options().unwrap();
        assert_eq!(o.get(GRAPH_ID).as_deref(), Some("-1"));
        // A new session has room for its graphs.
        assert!(GraphRuns::new(0).sets.len() < MAX_GRAPHS);
    }
}
