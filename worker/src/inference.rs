//! Inference with ONNX Runtime (loaded at run time from the library that
//! scripts/bootstrap.sh installs): RGB frame → padded NCHW float → model →
//! RGB frame of the original size.

use crate::error::ModelError;
use crate::graph_run::{GraphInputs, GraphRuns};
use crate::media::pool::FramePool;
use crate::media::Frame;
use framewise_common::config::ModelConfig;
use framewise_common::device::Device;
use ort::session::{NoSelectedOutputs, RunOptions, Session, SessionInputValue};
use ort::value::TensorRef;
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

static RUNTIME: OnceLock<ort::environment::Environment> = OnceLock::new();
static RUNTIME_INIT: Mutex<()> = Mutex::new(());

/// Loads libonnxruntime once per process (ORT_DYLIB_PATH wins over `lib`).
pub fn runtime(lib: &Path) -> Result<&'static ort::environment::Environment, ModelError> {
    if let Some(env) = RUNTIME.get() {
        return Ok(env);
    }
    let _guard = RUNTIME_INIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(env) = RUNTIME.get() {
        return Ok(env);
    }
    let lib: PathBuf = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| lib.to_path_buf());
    let rt_err = |detail: String| ModelError::Runtime {
        path: lib.clone(),
        detail,
    };
    if !lib.is_file() {
        return Err(rt_err("file not found".into()));
    }
    let env = ort::init_from(&lib)
        .map_err(|e| rt_err(e.to_string()))?
        .with_name("framewise")
        .build()
        .map_err(|e| rt_err(e.to_string()))?;
    Ok(RUNTIME.get_or_init(|| env))
}

/// CUDA provider settings for a session (from the worker config; a model variant may turn
/// TF32 on for itself, the quality gate's reference turns it off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaOptions {
    pub tf32: bool,
    pub prefer_nhwc: bool,
    /// Threads waiting for the GPU sleep instead of spinning (cuda.rs).
    pub blocking_sync: bool,
    /// How cuDNN picks convolution algorithms (`worker.cuda_conv_search`).
    pub conv_search: ConvSearch,
    /// Byte-image runs replay a captured CUDA graph (`worker.cuda_graph`, graph_run.rs).
    pub graph: bool,
}

/// `worker.cuda_conv_search`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvSearch {
    #[default]
    Exhaustive,
    Heuristic,
    Default,
}

impl Default for CudaOptions {
    /// The worker config's defaults.
    fn default() -> Self {
        (&framewise_common::config::WorkerConfig::default()).into()
    }
}

impl From<&framewise_common::config::WorkerConfig> for CudaOptions {
    fn from(c: &framewise_common::config::WorkerConfig) -> Self {
        Self {
            tf32: c.cuda_tf32,
            prefer_nhwc: c.cuda_prefer_nhwc,
            blocking_sync: c.cuda_blocking_sync,
            conv_search: match c.cuda_conv_search.as_str() {
                "heuristic" => ConvSearch::Heuristic,
                "default" => ConvSearch::Default,
                _ => ConvSearch::Exhaustive,
            },
            graph: c.cuda_graph,
        }
    }
}

/// How the session takes and returns images: planar float in the model's range (the file as
/// published), or packed RGB bytes with the conversion folded into the graph (optimize.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageLayout {
    F32Nchw,
    U8Nhwc,
}

/// One loaded model, ready to stylize frames of any size.
pub struct Stylizer {
    /// CUDA graphs for byte-image runs (`CudaOptions::graph`). Declared before the session so
    /// that their buffers go back to its allocator before it is dropped.
    graphs: Option<GraphRuns>,
    /// None in the synthetic mode used by scheduler benchmarks.
    session: Option<Session>,
    cfg: ModelConfig,
    /// The file the session was built from (a rewritten model lives in the cache).
    path: PathBuf,
    layout: ImageLayout,
    device: Device,
    input_buf: Vec<f32>,
    input_u8: Vec<u8>,
    synthetic: std::time::Duration,
    /// The model's batch dimension is dynamic (a rewritten model), so frames can share a run.
    batchable: bool,
    max_batch: usize,
    /// The frame size of this session's last run: on a GPU a run at another size is slow, at
    /// a new size and at one run before alike (ONNX Runtime's CUDA provider sets its
    /// convolutions up again: 0.25 s for one session on an H200, 1.2–2.5 s each with 8
    /// switching at once; BENCHMARKS.md, session 10).
    last_size: Option<(u32, u32)>,
    /// Buffers for stylized frames, recycled by the pipeline's encoder (media/pool.rs).
    pool: FramePool,
    /// The model's image input takes NV12 too (optimize::pixels_in): the name of its input
    /// for the conversion.
    yuv_input: Option<String>,
    /// Runs outside a graph on a session made with graphs (see graph_run::plain_options).
    plain_options: Option<RunOptions<NoSelectedOutputs>>,
}

impl Stylizer {
    /// Loads and checks the model on the CPU: the configured inputs and outputs must exist with usable shapes.
    pub fn load(
        env: &ort::environment::Environment,
        cfg: &ModelConfig,
        threads: usize,
    ) -> Result<Self, ModelError> {
        Self::load_on(
            env,
            cfg,
            threads,
            Device::Cpu,
            &cfg.path,
            CudaOptions::default(),
        )
    }

    /// Loads `path` (the configured model or a rewritten copy of it) for `device`. A CUDA
    /// provider that cannot start is an error here, never a quiet fallback to the CPU.
    pub fn load_on(
        env: &ort::environment::Environment,
        cfg: &ModelConfig,
        threads: usize,
        device: Device,
        path: &Path,
        cuda: CudaOptions,
    ) -> Result<Self, ModelError> {
        if !path.is_file() {
            return Err(ModelError::NotFound(path.to_path_buf()));
        }
        if device == Device::Cpu {
            // framewise's CPU ops split their runs over as many threads as the session has.
            crate::op_threads::set(threads);
        }
        let load = |e: &dyn std::fmt::Display| ModelError::Load {
            path: path.to_path_buf(),
            detail: e.to_string(),
        };
        let mut builder = Session::builder(env)
            .map_err(|e| load(&e))?
            .with_intra_threads(threads.max(1))
            .map_err(|e| load(&e))?
            .with_inter_threads(1)
            .map_err(|e| load(&e))?
            // Rewritten models may hold framewise's fused normalisation (norm_op.rs).
            .with_operators(crate::norm_op::domain().map_err(|e| load(&e))?)
            .map_err(|e| load(&e))?;
        if device == Device::Cpu && threads > 1 && uses_own_cpu_ops(path) {
            // framewise's CPU ops run their own threads beside the session's pool, whose idle
            // threads would otherwise spin on the cores those need (other models keep spinning).
            builder = builder
                .with_intra_op_spinning(false)
                .map_err(|e| load(&e))?;
        }
        // For benchmarks: ONNX Runtime's per-node timings, written as PREFIX_<date>.json when
        // the session ends (BENCHMARKS.md reads them by op).
        if let Some(prefix) = std::env::var_os("FW_ORT_PROFILE") {
            builder = builder.with_profiling(prefix).map_err(|e| load(&e))?;
        }
        let mut graph = matches!(device, Device::Cuda(_)) && cuda.graph;
        let session = match Self::commit(builder.clone(), device, cuda, graph, path) {
            Err(e) if graph && graphs_refused(&e.to_string()) => {
                // ONNX Runtime refuses graphs for a model with nodes off the GPU: run it without.
                tracing::warn!(model = %path.display(), %device, error = %e, "no CUDA graphs for this model");
                graph = false;
                Self::commit(builder, device, cuda, false, path)
            }
            r => r,
        }?;
        let (layout, batchable) = check_shapes(&session, cfg, path)?;
        // optimize::pixels_in leaves the uint8 input's channels open (3: RGB, 1: NV12); its
        // conversion input is an overridable initializer, which ONNX Runtime does not list.
        let open_channels = session
            .inputs()
            .iter()
            .find(|o| o.name() == cfg.input)
            .and_then(|o| o.dtype().tensor_shape().map(|s| s.to_vec()))
            .is_some_and(|s| s.len() == 4 && s[3] < 0);
        let yuv_input = (layout == ImageLayout::U8Nhwc && open_channels)
            .then(|| format!("{}__fw_yuv", cfg.input));
        let plain_options = graph
            .then(crate::graph_run::plain_options)
            .transpose()
            .map_err(|e| load(&e))?;
        let graphs = match device {
            Device::Cuda(n) if graph && layout == ImageLayout::U8Nhwc => Some(GraphRuns::new(n)),
            _ => None,
        };
        Ok(Self {
            session: Some(session),
            cfg: cfg.clone(),
            path: path.to_path_buf(),
            layout,
            device,
            input_buf: Vec::new(),
            input_u8: Vec::new(),
            synthetic: std::time::Duration::ZERO,
            batchable,
            max_batch: 1,
            last_size: None,
            pool: FramePool::default(),
            yuv_input,
            graphs,
            plain_options,
        })
    }

    /// The session for `path` on `device`, its CUDA provider set from `cuda` and `graph`.
    fn commit(
        mut builder: ort::session::builder::SessionBuilder,
        device: Device,
        cuda: CudaOptions,
        graph: bool,
        path: &Path,
    ) -> Result<Session, ModelError> {
        let load = |e: &dyn std::fmt::Display| ModelError::Load {
            path: path.to_path_buf(),
            detail: e.to_string(),
        };
        if let Device::Cuda(n) = device {
            crate::cuda::ignore_other_captures();
            let o = cuda;
            if o.blocking_sync {
                if let Err(e) = crate::cuda::blocking_sync(n) {
                    tracing::warn!(gpu = n, error = %e, "threads waiting for the GPU will spin");
                }
            }
            let ep = ort::ep::CUDA::default()
                .with_device_id(n as i32)
                .with_tf32(o.tf32)
                .with_prefer_nhwc(o.prefer_nhwc)
                .with_conv_algorithm_search(match o.conv_search {
                    ConvSearch::Exhaustive => ort::ep::cuda::ConvAlgorithmSearch::Exhaustive,
                    ConvSearch::Heuristic => ort::ep::cuda::ConvAlgorithmSearch::Heuristic,
                    ConvSearch::Default => ort::ep::cuda::ConvAlgorithmSearch::Default,
                })
                .with_cuda_graph(graph)
                .build()
                .error_on_failure();
            builder = builder
                .with_execution_providers([ep])
                .map_err(|e| ModelError::Device {
                    device: device.to_string(),
                    detail: e.to_string(),
                })?;
        }
        {
            // ONNX Runtime adds a custom op domain to its process-wide schema table with a
            // check-then-add that two sessions created at once can both pass ("the domain is
            // already exist", seen in the tests): the first creation runs alone.
            static FIRST: Mutex<bool> = Mutex::new(false);
            let mut done = FIRST.lock().unwrap_or_else(|p| p.into_inner());
            if *done {
                drop(done);
                builder.commit_from_file(path)
            } else {
                let s = builder.commit_from_file(path);
                *done = s.is_ok();
                s
            }
        }
        .map_err(|e| load(&e))
    }

    /// The device this model runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Whether NV12 frames of this size go to the model as they are (converted on its
    /// device): a model with such an input, even sides the model needs no padding for. Other
    /// NV12 frames are converted to RGB on the CPU first (slower than GStreamer's conversion:
    /// decode those to RGB).
    pub fn takes_nv12(&self, width: u32, height: u32) -> bool {
        let m = self.cfg.pad_multiple.max(1);
        self.yuv_input.is_some()
            && self.session.is_some()
            && [width, height]
                .iter()
                .all(|&d| d.is_multiple_of(2) && d.is_multiple_of(m))
    }

    /// The model file in use (the configured one or its rewritten copy).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Frames per second at `w`x`h` (one warm-up, then `n` timed frames of a gradient): the
    /// throughput a worker reports when it registers, so capacity can be compared across workers.
    pub fn measure_fps(&mut self, w: u32, h: u32, n: usize) -> Result<f64, ModelError> {
        let frame = gradient(w, h);
        let style = self.default_style();
        self.stylize(&frame, &style)?;
        let t = std::time::Instant::now();
        for _ in 0..n.max(1) {
            self.stylize(&frame, &style)?;
        }
        Ok(n.max(1) as f64 / t.elapsed().as_secs_f64().max(1e-9))
    }

    /// The first style at full weight (or no weights for a model without a style input).
    pub fn default_style(&self) -> Vec<f32> {
        if self.cfg.style_input.is_empty() {
            return Vec::new();
        }
        let mut style = vec![0.0f32; self.cfg.style_count];
        if let Some(s) = style.first_mut() {
            *s = 1.0;
        }
        style
    }

    /// A stand-in for scheduler benchmarks only: sleeps `per_frame` and returns the frame unchanged.
    pub fn synthetic(per_frame: std::time::Duration, cfg: &ModelConfig) -> Self {
        Self {
            session: None,
            cfg: cfg.clone(),
            path: cfg.path.clone(),
            layout: ImageLayout::F32Nchw,
            device: Device::Cpu,
            input_buf: Vec::new(),
            input_u8: Vec::new(),
            synthetic: per_frame,
            batchable: false,
            max_batch: 1,
            last_size: None,
            pool: FramePool::default(),
            yuv_input: None,
            graphs: None,
            plain_options: None,
        }
    }

    /// Runs one throw-away frame of `w`x`h` on a GPU session whose last run was at another
    /// size, so the slow run at a changed size (see `last_size`) overlaps the decoder's start
    /// instead of following it. Nothing to do on a CPU.
    pub fn warm_up_size(&mut self, w: u32, h: u32) -> Result<(), ModelError> {
        if !matches!(self.device, Device::Cuda(_)) || self.session.is_none() {
            return Ok(());
        }
        if self.last_size == Some((w, h)) {
            return Ok(());
        }
        let style = self.default_style();
        if !self.takes_nv12(w, h) {
            return self.stylize(&gradient(w, h), &style).map(|_| ());
        }
        // The warm-up frame goes in as NV12, as the job's will. The model's NV12 input is
        // checked once per process, device and model file against the same frame converted on
        // the CPU (its test runs the CPU kernel only): a mismatch turns it off (NV12 frames
        // are then converted on the CPU) instead of stylizing wrong colours.
        static CHECKED: Mutex<Vec<(Device, PathBuf)>> = Mutex::new(Vec::new());
        let key = (self.device, self.path.clone());
        let (yuv, rgb) = (crate::pixels_op::Yuv::default(), gradient(w, h));
        let nv12 = Frame {
            data: crate::pixels_op::rgb_to_nv12(&rgb.data, w as usize, h as usize, &yuv),
            yuv: Some(yuv),
            ..rgb
        };
        let direct = self.stylize(&nv12, &style)?;
        let checked = || CHECKED.lock().unwrap_or_else(|p| p.into_inner());
        if checked().contains(&key) {
            return Ok(());
        }
        let converted = self.stylize(&nv12.to_rgb(), &style)?;
        let db = crate::variant::psnr(&direct.data, &converted.data);
        if db < 50.0 {
            tracing::warn!(
                psnr_db = db,
                path = %self.path.display(),
                "the model's NV12 input disagrees with the CPU's conversion on this device: NV12 frames are converted on the CPU"
            );
            self.yuv_input = None;
        } else {
            // Another session may have passed meanwhile: the key goes in once.
            let mut done = checked();
            if !done.contains(&key) {
                done.push(key);
            }
        }
        Ok(())
    }

    /// Runs the model on one frame with the given style weights (ignored if the model has no style input).
    pub fn stylize(&mut self, frame: &Frame, style: &[f32]) -> Result<Frame, ModelError> {
        let mut out = self.run(std::slice::from_ref(frame), style)?;
        out.pop().ok_or_else(|| ModelError::Run {
            path: self.path.clone(),
            detail: "the model returned no frame".into(),
        })
    }

    /// Several frames of one size in one run where the model takes a batch (a rewritten model
    /// with a dynamic batch dimension): fewer, larger launches on a GPU. Else one at a time.
    pub fn stylize_batch(
        &mut self,
        frames: &[Frame],
        style: &[f32],
    ) -> Result<Vec<Frame>, ModelError> {
        let same = frames
            .windows(2)
            .all(|p| (p[0].width, p[0].height) == (p[1].width, p[1].height));
        if frames.len() > 1 && self.batchable && same {
            return self.run(frames, style);
        }
        frames.iter().map(|f| self.stylize(f, style)).collect()
    }

    /// This pipeline's frame buffers: decoded frames are made in them and stylized frames
    /// come back to them from the encoder.
    pub fn frame_pool(&self) -> FramePool {
        self.pool.clone()
    }

    /// The most frames one `stylize_batch` call should get (1 = the model takes no batch).
    pub fn max_batch(&self) -> usize {
        if self.batchable {
            self.max_batch.max(1)
        } else {
            1
        }
    }

    /// Sets how many frames to batch per run (used only if the model takes a batch).
    pub fn set_max_batch(&mut self, n: usize) {
        self.max_batch = n.max(1);
    }

    /// NV12 frames converted to RGB on the CPU, unless the model takes them as they are (all
    /// of one conversion, no padding to a multiple); None when there is nothing to convert.
    fn nv12_as_rgb(&self, frames: &[Frame]) -> Option<Vec<Frame>> {
        let first = frames.first()?;
        if frames.iter().all(|f| f.yuv.is_none()) {
            return None;
        }
        let direct = self.takes_nv12(first.width, first.height)
            && frames.iter().all(|f| f.yuv.is_some() && f.yuv == first.yuv);
        (!direct).then(|| frames.iter().map(Frame::to_rgb).collect())
    }

    fn run(&mut self, frames: &[Frame], style: &[f32]) -> Result<Vec<Frame>, ModelError> {
        if let Some(rgb) = self.nv12_as_rgb(frames) {
            return self.run(&rgb, style);
        }
        let Some(session) = self.session.as_mut() else {
            std::thread::sleep(self.synthetic * frames.len() as u32);
            return Ok(frames.iter().map(Frame::to_rgb).collect());
        };
        if matches!(self.device, Device::Cuda(_)) {
            crate::cuda::ignore_other_captures();
        }
        let path = &self.path;
        let pool = &self.pool;
        let run_err = |e: &dyn std::fmt::Display| ModelError::Run {
            path: path.clone(),
            detail: e.to_string(),
        };
        let Some(first) = frames.first() else {
            return Ok(Vec::new());
        };
        let n = frames.len();
        if n > 1 && self.layout == ImageLayout::F32Nchw {
            return Err(run_err(&"this model takes one frame per run"));
        }
        let (w, h) = (first.width as usize, first.height as usize);
        self.last_size = Some((first.width, first.height));
        let m = self.cfg.pad_multiple.max(1) as usize;
        let (pw, ph) = (w.div_ceil(m) * m, h.div_ceil(m) * m);
        let [lo, hi] = self.cfg.value_range;

        // The image as the session takes it: planar floats, or bytes (NV12 as the decoder
        // made it, which nv12_as_rgb let through unpadded, or RGB padded to the model's multiple).
        let image: Image = match self.layout {
            ImageLayout::F32Nchw => {
                to_nchw_padded(&first.data, w, h, pw, ph, lo, hi, &mut self.input_buf);
                Image::F32(&self.input_buf, [1, 3, ph, pw])
            }
            ImageLayout::U8Nhwc if first.yuv.is_some() => {
                let one = w * h * 3 / 2;
                let data: &[u8] = if n == 1 {
                    &first.data
                } else {
                    self.input_u8.clear();
                    for f in frames {
                        self.input_u8.extend_from_slice(&f.data[..one]);
                    }
                    &self.input_u8
                };
                Image::U8(data, [n, h * 3 / 2, w, 1])
            }
            ImageLayout::U8Nhwc => {
                let data: &[u8] = if n == 1 && (pw, ph) == (w, h) {
                    &first.data
                } else {
                    let one = pw * ph * 3;
                    self.input_u8.resize(n * one, 0);
                    for (k, f) in frames.iter().enumerate() {
                        pad_rgb_into(
                            &f.data,
                            w,
                            h,
                            pw,
                            ph,
                            &mut self.input_u8[k * one..(k + 1) * one],
                        );
                    }
                    &self.input_u8
                };
                Image::U8(data, [n, ph, pw, 3])
            }
        };
        let yuv = match (self.yuv_input.as_deref(), first.yuv) {
            (Some(name), Some(y)) => Some((name, y.values())),
            _ => None,
        };
        // No weights given (e.g. a job from the blob trigger): the model's first style.
        let first_style: Vec<f32>;
        let style = if style.is_empty() && self.cfg.style_count > 0 {
            first_style = (0..self.cfg.style_count)
                .map(|i| if i == 0 { 1.0 } else { 0.0 })
                .collect();
            &first_style[..]
        } else {
            style
        };
        let mut floats: Vec<(&str, &[f32])> = Vec::with_capacity(1 + self.cfg.extra_inputs.len());
        if !self.cfg.style_input.is_empty() {
            if style.len() != self.cfg.style_count {
                return Err(run_err(&format!(
                    "{} style weights given, the model takes {}",
                    style.len(),
                    self.cfg.style_count
                )));
            }
            floats.push((&self.cfg.style_input, style));
        }
        for (name, values) in &self.cfg.extra_inputs {
            floats.push((name, values));
        }
        let frame_of = |k: usize, data: Vec<u8>| Frame {
            pts: frames[k].pts,
            width: frames[k].width,
            height: frames[k].height,
            data,
            yuv: None,
        };
        // Bytes in and out through a CUDA graph where the session has them (graph_run.rs).
        let mut graph_failed = None;
        if let (Some(graphs), Image::U8(data, shape)) = (self.graphs.as_mut(), &image) {
            let gi = GraphInputs {
                image: (&self.cfg.input, *shape, data),
                yuv,
                floats: &floats,
                output: (&self.cfg.output, [n, ph, pw, 3]),
            };
            match graphs.run(session, &gi) {
                Ok(Some(out)) => return Ok(crop_nhwc(out, n, (w, h), (pw, ph), pool, frame_of)),
                Ok(None) => {} // no room for another graph: this shape runs without
                // This frame and the session's later ones run without graphs instead.
                Err(e) => graph_failed = Some(e),
            }
        }
        if let Some(e) = graph_failed {
            tracing::warn!(model = %path.display(), device = %self.device, error = %e, "CUDA graph run failed; this session runs without graphs from now on");
            self.graphs = None;
        }

        let mut inputs: Vec<(Cow<str>, SessionInputValue)> = Vec::with_capacity(2 + floats.len());
        let image_value: SessionInputValue = match image {
            Image::F32(data, shape) => TensorRef::from_array_view((shape, data))
                .map_err(|e| run_err(&e))?
                .into(),
            Image::U8(data, shape) => TensorRef::from_array_view((shape, data))
                .map_err(|e| run_err(&e))?
                .into(),
        };
        inputs.push((Cow::Borrowed(self.cfg.input.as_str()), image_value));
        if let Some((name, v)) = yuv.as_ref() {
            let t = TensorRef::from_array_view(([12usize], &v[..])).map_err(|e| run_err(&e))?;
            inputs.push((Cow::Borrowed(*name), t.into()));
        }
        for (name, values) in &floats {
            let v =
                TensorRef::from_array_view(([values.len()], *values)).map_err(|e| run_err(&e))?;
            inputs.push((Cow::Borrowed(*name), v.into()));
        }
        let outputs = match &self.plain_options {
            Some(o) => session.run_with_options(inputs, o),
            None => session.run(inputs),
        }
        .map_err(|e| run_err(&e))?;
        let out = outputs
            .get(&self.cfg.output)
            .ok_or_else(|| run_err(&format!("no output named {:?}", self.cfg.output)))?;
        match self.layout {
            ImageLayout::F32Nchw => {
                let (shape, data) = out.try_extract_tensor::<f32>().map_err(|e| run_err(&e))?;
                if shape.len() != 4
                    || shape[1] != 3
                    || shape[2] as usize != ph
                    || shape[3] as usize != pw
                {
                    return Err(run_err(&format!(
                        "output shape {:?}, expected [1, 3, {ph}, {pw}]",
                        &shape[..]
                    )));
                }
                let mut rgb = pool.take(w * h * 3);
                rgb.resize(w * h * 3, 0);
                from_nchw_cropped(data, w, h, pw, ph, lo, hi, &mut rgb);
                Ok(vec![frame_of(0, rgb)])
            }
            ImageLayout::U8Nhwc => {
                let (shape, data) = out.try_extract_tensor::<u8>().map_err(|e| run_err(&e))?;
                if shape.len() != 4
                    || shape[0] as usize != n
                    || shape[3] != 3
                    || shape[1] as usize != ph
                    || shape[2] as usize != pw
                {
                    return Err(run_err(&format!(
                        "output shape {:?}, expected [{n}, {ph}, {pw}, 3]",
                        &shape[..]
                    )));
                }
                Ok(crop_nhwc(data, n, (w, h), (pw, ph), pool, frame_of))
            }
        }
    }
}

/// The image input of one run, as the session takes it.
enum Image<'a> {
    F32(&'a [f32], [usize; 4]),
    U8(&'a [u8], [usize; 4]),
}

/// `n` RGB frames of `w`x`h` cut from packed `[n, ph, pw, 3]` model output, in pool buffers.
fn crop_nhwc(
    data: &[u8],
    n: usize,
    (w, h): (usize, usize),
    (pw, ph): (usize, usize),
    pool: &FramePool,
    frame_of: impl Fn(usize, Vec<u8>) -> Frame,
) -> Vec<Frame> {
    let one = pw * ph * 3;
    (0..n)
        .map(|k| {
            let src = &data[k * one..(k + 1) * one];
            let mut rgb = pool.take(w * h * 3);
            for y in 0..h {
                rgb.extend_from_slice(&src[y * pw * 3..y * pw * 3 + w * 3]);
            }
            frame_of(k, rgb)
        })
        .collect()
}

/// A smooth test image with colour in both directions (start-up throughput, quality gates).
pub fn gradient(w: u32, h: u32) -> Frame {
    let mut data = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            data.extend_from_slice(&[(x * 255 / w) as u8, (y * 255 / h) as u8, 128]);
        }
    }
    Frame {
        pts: 0,
        width: w,
        height: h,
        data,
        yuv: None,
    }
}

fn check_shapes(
    session: &Session,
    cfg: &ModelConfig,
    path: &Path,
) -> Result<(ImageLayout, bool), ModelError> {
    let shape_err = |detail: String| ModelError::Shape {
        path: path.to_path_buf(),
        detail,
    };
    let names = |v: &[ort::value::Outlet]| {
        v.iter()
            .map(|o| o.name().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let find =
        |list: &[ort::value::Outlet], name: &str, what: &str| -> Result<Vec<i64>, ModelError> {
            let o = list.iter().find(|o| o.name() == name).ok_or_else(|| {
                shape_err(format!(
                    "no {what} named {name:?} (it has: {})",
                    names(list)
                ))
            })?;
            o.dtype()
                .tensor_shape()
                .map(|s| s.to_vec())
                .ok_or_else(|| shape_err(format!("{what} {name:?} is not a tensor")))
        };
    // A uint8 image input means the conversion was folded into the graph: NHWC bytes in and out.
    let layout = match session
        .inputs()
        .iter()
        .find(|o| o.name() == cfg.input)
        .and_then(|o| o.dtype().tensor_type())
    {
        Some(ort::value::TensorElementType::Uint8) => ImageLayout::U8Nhwc,
        _ => ImageLayout::F32Nchw,
    };
    let image_ok = |s: &[i64]| match layout {
        ImageLayout::F32Nchw => s.len() == 4 && (s[0] == 1 || s[0] < 0) && (s[1] == 3 || s[1] < 0),
        ImageLayout::U8Nhwc => s.len() == 4 && (s[0] == 1 || s[0] < 0) && (s[3] == 3 || s[3] < 0),
    };
    let expected = match layout {
        ImageLayout::F32Nchw => "[1, 3, H, W]",
        ImageLayout::U8Nhwc => "[1, H, W, 3]",
    };
    let i = find(session.inputs(), &cfg.input, "input")?;
    if !image_ok(&i) {
        return Err(shape_err(format!(
            "input {:?} has shape {i:?}, expected {expected}",
            cfg.input
        )));
    }
    let o = find(session.outputs(), &cfg.output, "output")?;
    if !image_ok(&o) {
        return Err(shape_err(format!(
            "output {:?} has shape {o:?}, expected {expected}",
            cfg.output
        )));
    }
    if !cfg.style_input.is_empty() {
        let s = find(session.inputs(), &cfg.style_input, "input")?;
        if s.len() != 1 || (s[0] >= 0 && s[0] as usize != cfg.style_count) {
            return Err(shape_err(format!(
                "style input {:?} has shape {s:?}, expected [{}]",
                cfg.style_input, cfg.style_count
            )));
        }
    }
    for name in cfg.extra_inputs.keys() {
        find(session.inputs(), name, "input")?;
    }
    // A symbolic batch dimension (a rewritten model) lets frames share one run.
    let batchable = layout == ImageLayout::U8Nhwc && i[0] < 0;
    Ok((layout, batchable))
}

/// Packed RGB bytes reflect-padded to pw x ph, into a slice of exactly pw x ph x 3 bytes
/// (one frame of the rewritten model's input).
pub fn pad_rgb_into(rgb: &[u8], w: usize, h: usize, pw: usize, ph: usize, out: &mut [u8]) {
    for y in 0..ph {
        let sy = reflect(y, h);
        let row = &rgb[sy * w * 3..(sy + 1) * w * 3];
        let o = y * pw * 3;
        out[o..o + w * 3].copy_from_slice(row);
        for x in w..pw {
            let sx = reflect(x, w) * 3;
            out[o + x * 3..o + x * 3 + 3].copy_from_slice(&row[sx..sx + 3]);
        }
    }
}

/// Reflect index (numpy's "reflect": the edge pixel is not repeated).
#[inline]
fn reflect(i: usize, n: usize) -> usize {
    if i < n || n < 2 {
        i.min(n - 1)
    } else {
        (2 * (n - 1)).saturating_sub(i)
    }
}

/// Packed RGB bytes → planar float in the model's range, reflect-padded to pw x ph.
#[allow(clippy::too_many_arguments)]
pub fn to_nchw_padded(
    rgb: &[u8],
    w: usize,
    h: usize,
    pw: usize,
    ph: usize,
    lo: f32,
    hi: f32,
    out: &mut Vec<f32>,
) {
    let plane = pw * ph;
    out.resize(3 * plane, 0.0);
    let scale = (hi - lo) / 255.0;
    let lut: Vec<f32> = (0..256).map(|v| v as f32 * scale + lo).collect();
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for y in 0..ph {
        let sy = reflect(y, h);
        let row = &rgb[sy * w * 3..(sy + 1) * w * 3];
        let o = y * pw;
        for (x, px) in row.chunks_exact(3).enumerate() {
            r[o + x] = lut[px[0] as usize];
            g[o + x] = lut[px[1] as usize];
            b[o + x] = lut[px[2] as usize];
        }
        for x in w..pw {
            let sx = reflect(x, w) * 3;
            r[o + x] = lut[row[sx] as usize];
            g[o + x] = lut[row[sx + 1] as usize];
            b[o + x] = lut[row[sx + 2] as usize];
        }
    }
}

/// Planar float in the model's range → packed RGB bytes, cropped to w x h.
#[allow(clippy::too_many_arguments)]
pub fn from_nchw_cropped(
    data: &[f32],
    w: usize,
    h: usize,
    pw: usize,
    ph: usize,
    lo: f32,
    hi: f32,
    out: &mut [u8],
) {
    let plane = pw * ph;
    let scale = 255.0 / (hi - lo);
    for y in 0..h {
        let o = y * pw;
        for x in 0..w {
            let d = (y * w + x) * 3;
            for c in 0..3 {
                let v = (data[c * plane + o + x] - lo) * scale;
                out[d + c] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

/// Whether a session failed only because ONNX Runtime will not capture CUDA graphs for it
/// (nodes off the GPU, control flow: every such refusal says "cannot use the CUDA Graph
/// feature"); then it is loaded again without graphs. Any other failure (no memory, a bad
/// model, a provider that does not start) is the error it is, not retried.
/// Whether the model file holds framewise's CPU ops (conv_op.rs, narrow_conv_op.rs): their
/// names appear in its nodes' op types.
fn uses_own_cpu_ops(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    [crate::conv_op::OP, crate::narrow_conv_op::OP]
        .iter()
        .any(|op| bytes.windows(op.len()).any(|w| w == op.as_bytes()))
}

fn graphs_refused(error: &str) -> bool {
    error.contains("cannot use the CUDA Graph feature")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_ops_are_found_by_their_names_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (with, without) = (dir.path().join("a.onnx"), dir.path().join("b.onnx"));
        std::fs::write(&with, b"\x0a\x0bNarrowConv\x12ai.framewise").unwrap();
        std::fs::write(&without, b"\x0a\x04Conv\x12").unwrap();
        assert!(uses_own_cpu_ops(&with));
        assert!(!uses_own_cpu_ops(&without));
        assert!(!uses_own_cpu_ops(&dir.path().join("missing.onnx")));
    }

    #[test]
    fn only_a_refusal_of_cuda_graphs_loads_the_model_again_without() {
        // ONNX Runtime's refusals (inference_session.cc), as ModelError::Load shows them.
        assert!(graphs_refused("model.onnx: could not load: This session cannot use the CUDA Graph feature as requested by the user  as all compute graph nodes have not been partitioned to the CUDA EP."));
        assert!(graphs_refused("This session cannot use the CUDA Graph feature as requested by the user as the model has control flow nodes which can't be supported by CUDA Graphs."));
        assert!(!graphs_refused(
            "model.onnx: could not load: CUDA failure 2: out of memory"
        ));
        assert!(!graphs_refused(
            "model.onnx: could not load: Protobuf parsing failed."
        ));
    }

    #[test]
    fn pad_and_crop_round_trip() {
        let (w, h) = (5usize, 3usize);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 256) as u8).collect();
        let mut f = Vec::new();
        to_nchw_padded(&rgb, w, h, 8, 4, 0.0, 1.0, &mut f);
        assert_eq!(f.len(), 3 * 8 * 4);
        // reflect: column 5 mirrors column 3, row 3 mirrors row 1
        assert_eq!(f[5], f[3]);
        assert_eq!(f[3 * 8], f[8]);
        let mut back = vec![0u8; w * h * 3];
        from_nchw_cropped(&f, w, h, 8, 4, 0.0, 1.0, &mut back);
        assert_eq!(back, rgb);
        // The byte padding for rewritten models mirrors the same pixels.
        let mut p = vec![0u8; 8 * 4 * 3];
        pad_rgb_into(&rgb, w, h, 8, 4, &mut p);
        assert_eq!(p.len(), 8 * 4 * 3);
        for y in 0..4 {
            for x in 0..8 {
                for c in 0..3 {
                    let planar = f[c * 32 + y * 8 + x];
                    let byte = p[(y * 8 + x) * 3 + c] as f32 / 255.0;
                    assert!((byte - planar).abs() < 1e-6, "{x},{y},{c}");
                }
            }
        }
    }

    #[test]
    fn value_range_is_applied() {
        let rgb = vec![255u8, 0, 51];
        let mut f = Vec::new();
        to_nchw_padded(&rgb, 1, 1, 1, 1, 0.0, 255.0, &mut f);
        assert_eq!(f, vec![255.0, 0.0, 51.0]);
    }
}
