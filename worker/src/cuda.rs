//! The CUDA driver calls framewise makes itself (through libcuda.so.1, loaded at run time so a
//! CPU-only build and machine never need it): the blocking-sync setting, and launching the fused
//! normalisation's kernels (norm_op.rs).
//!
//! Blocking sync: by default a thread waiting for the GPU (ONNX Runtime synchronises its stream
//! after every run) spins on a core while the process has fewer CUDA contexts than cores; with
//! several pipelines per GPU that is several cores taken from x264 and the decoders. Blocking
//! sync makes the waiting thread sleep instead.

use crate::norm_op::Layout;
use libloading::Library;
use std::collections::{HashMap, HashSet};
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::{Mutex, OnceLock};

/// CU_CTX_SCHED_BLOCKING_SYNC in cuda.h.
const SCHED_BLOCKING_SYNC: u32 = 0x04;

static DONE: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

/// Makes threads waiting for GPU `device` sleep instead of spin. Takes effect only before the
/// device's first context is created, so it runs before the first session; once per device.
pub fn blocking_sync(device: u32) -> Result<(), String> {
    let mut done = DONE.lock().unwrap_or_else(|p| p.into_inner());
    if !done.get_or_insert_with(HashSet::new).insert(device) {
        return Ok(());
    }
    let d = driver()?;
    let mut dev = 0i32;
    // SAFETY: driver calls with the signatures cuda.h declares and an out-pointer to a local.
    unsafe {
        check(d, (d.device_get)(&mut dev, device as i32), "cuDeviceGet")?;
        check(
            d,
            (d.primary_ctx_set_flags)(dev, SCHED_BLOCKING_SYNC),
            "cuDevicePrimaryCtxSetFlags",
        )
    }
    .map_err(|e| format!("GPU {device}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The fused normalisation's kernels (worker/cuda/instance_norm.cu, norm_op.rs), launched through
// the driver API on ONNX Runtime's stream: the PTX is embedded and compiled by the driver for
// the GPU at hand, once per device, so the worker needs no CUDA toolkit.

/// The kernels' PTX, from scripts/ptx.sh.
const NORM_PTX: &str = include_str!("../cuda/instance_norm.ptx");
/// Threads per block (THREADS in the .cu).
const NORM_THREADS: u32 = 256;
/// Values of one plane per block: 256 threads x 8 float4 loads.
const NORM_CHUNK: u32 = 8192;
/// Values (pixels x channels) one block of fw_norm_stats_nhwc sums.
const NHWC_CHUNK: usize = 16_384;

type CuResult = i32;

/// The driver functions used, resolved once per process (libcuda.so.1 stays loaded: ONNX
/// Runtime's CUDA provider uses it too).
struct Driver {
    init: unsafe extern "C" fn(u32) -> CuResult,
    device_get: unsafe extern "C" fn(*mut i32, i32) -> CuResult,
    primary_ctx_retain: unsafe extern "C" fn(*mut *mut c_void, i32) -> CuResult,
    primary_ctx_set_flags: unsafe extern "C" fn(i32, u32) -> CuResult,
    ctx_get_current: unsafe extern "C" fn(*mut *mut c_void) -> CuResult,
    ctx_set_current: unsafe extern "C" fn(*mut c_void) -> CuResult,
    module_load_data: unsafe extern "C" fn(*mut *mut c_void, *const c_void) -> CuResult,
    module_get_function:
        unsafe extern "C" fn(*mut *mut c_void, *mut c_void, *const c_char) -> CuResult,
    #[allow(clippy::type_complexity)]
    launch_kernel: unsafe extern "C" fn(
        *mut c_void,
        u32,
        u32,
        u32,
        u32,
        u32,
        u32,
        u32,
        *mut c_void,
        *mut *mut c_void,
        *mut *mut c_void,
    ) -> CuResult,
    error_name: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
    mem_host_alloc: unsafe extern "C" fn(*mut *mut c_void, usize, u32) -> CuResult,
    mem_free_host: unsafe extern "C" fn(*mut c_void) -> CuResult,
    memcpy_htod: unsafe extern "C" fn(u64, *const c_void, usize) -> CuResult,
    memcpy_dtoh: unsafe extern "C" fn(*mut c_void, u64, usize) -> CuResult,
    exchange_capture_mode: unsafe extern "C" fn(*mut u32) -> CuResult,
}

// SAFETY: plain function pointers into libcuda, which is thread-safe.
unsafe impl Send for Driver {}
unsafe impl Sync for Driver {}

static DRIVER: OnceLock<Result<Driver, String>> = OnceLock::new();

fn driver() -> Result<&'static Driver, String> {
    DRIVER
        .get_or_init(|| {
            // SAFETY: the symbols are looked up with the signatures cuda.h declares; the library
            // is leaked so the pointers stay valid for the life of the process.
            unsafe {
                let lib = Library::new("libcuda.so.1").map_err(|e| format!("libcuda.so.1: {e}"))?;
                let lib: &'static Library = Box::leak(Box::new(lib));
                macro_rules! sym {
                    ($name:literal) => {
                        *lib.get($name).map_err(|e| {
                            format!(
                                "libcuda.so.1 has no {}: {e}",
                                String::from_utf8_lossy($name)
                            )
                        })?
                    };
                }
                let d = Driver {
                    init: sym!(b"cuInit\0"),
                    device_get: sym!(b"cuDeviceGet\0"),
                    primary_ctx_retain: sym!(b"cuDevicePrimaryCtxRetain\0"),
                    primary_ctx_set_flags: sym!(b"cuDevicePrimaryCtxSetFlags_v2\0"),
                    ctx_get_current: sym!(b"cuCtxGetCurrent\0"),
                    ctx_set_current: sym!(b"cuCtxSetCurrent\0"),
                    module_load_data: sym!(b"cuModuleLoadData\0"),
                    module_get_function: sym!(b"cuModuleGetFunction\0"),
                    launch_kernel: sym!(b"cuLaunchKernel\0"),
                    error_name: sym!(b"cuGetErrorName\0"),
                    mem_host_alloc: sym!(b"cuMemHostAlloc\0"),
                    mem_free_host: sym!(b"cuMemFreeHost\0"),
                    // The per-thread default stream's copies: no implicit wait for other
                    // streams (the legacy stream's would wait for every session's work).
                    memcpy_htod: sym!(b"cuMemcpyHtoD_v2_ptds\0"),
                    memcpy_dtoh: sym!(b"cuMemcpyDtoH_v2_ptds\0"),
                    exchange_capture_mode: sym!(b"cuThreadExchangeStreamCaptureMode\0"),
                };
                check(&d, (d.init)(0), "cuInit")?;
                Ok(d)
            }
        })
        .as_ref()
        .map_err(|e| e.clone())
}

/// An error naming the call and the driver's name for the code.
fn check(d: &Driver, rc: CuResult, call: &str) -> Result<(), String> {
    if rc == 0 {
        return Ok(());
    }
    let mut name: *const c_char = std::ptr::null();
    // SAFETY: cuGetErrorName stores a pointer to a static string, or fails and leaves it null.
    let text = unsafe {
        if (d.error_name)(rc, &mut name) == 0 && !name.is_null() {
            CStr::from_ptr(name).to_string_lossy().into_owned()
        } else {
            "unknown".into()
        }
    };
    Err(format!("{call} failed with CUresult {rc} ({text})"))
}

/// The kernels loaded into a device's primary context (the one ONNX Runtime uses). Each fused
/// node keeps a copy after its first run, so launches take no process-wide lock.
#[derive(Clone, Copy, Debug)]
pub struct NormKernels {
    ctx: usize,
    stats: usize,
    apply: usize,
    /// Channels last: stats and apply for float, then for half values; the coefficients.
    stats_nhwc: [usize; 2],
    apply_nhwc: [usize; 2],
    coefficients: usize,
    /// The channels-last reflect pad, copying 16-, 4- or 2-byte units.
    pad_nhwc: [usize; 3],
    /// The model's image input: RGB copied, NV12 converted (pixels_op.rs).
    pixels_in: usize,
}

static LOADED: Mutex<Option<HashMap<i32, NormKernels>>> = Mutex::new(None);

impl NormKernels {
    /// The kernels on `device`, kept in `cache` by a node after its first run (so launches
    /// take no process-wide lock).
    pub fn cached(cache: &mut Option<(i32, NormKernels)>, device: i32) -> Result<Self, String> {
        match *cache {
            Some((d, k)) if d == device => Ok(k),
            _ => {
                let k = Self::on(device)?;
                *cache = Some((device, k));
                Ok(k)
            }
        }
    }

    /// The kernels on `device`, loaded the first time (the driver compiles the PTX then: tens
    /// of milliseconds, once per device and process).
    pub fn on(device: i32) -> Result<Self, String> {
        load_kernels(driver()?, device)
    }
}

fn load_kernels(d: &Driver, device: i32) -> Result<NormKernels, String> {
    let mut map = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    let map = map.get_or_insert_with(HashMap::new);
    // SAFETY: driver calls with out-pointers to locals; the PTX image is NUL-terminated.
    unsafe {
        let k = match map.get(&device) {
            Some(k) => *k,
            None => {
                let mut dev = 0i32;
                check(d, (d.device_get)(&mut dev, device), "cuDeviceGet")?;
                let mut ctx = std::ptr::null_mut();
                check(
                    d,
                    (d.primary_ctx_retain)(&mut ctx, dev),
                    "cuDevicePrimaryCtxRetain",
                )?;
                make_current(d, ctx)?;
                let image = CString::new(NORM_PTX).map_err(|e| e.to_string())?;
                let mut module = std::ptr::null_mut();
                check(
                    d,
                    (d.module_load_data)(&mut module, image.as_ptr().cast()),
                    "cuModuleLoadData (the fused normalisation's PTX)",
                )?;
                let mut f = [std::ptr::null_mut(); 11];
                let names = [
                    c"fw_norm_stats",
                    c"fw_norm_apply",
                    c"fw_norm_stats_nhwc_f32",
                    c"fw_norm_stats_nhwc_f16",
                    c"fw_norm_apply_nhwc_f32",
                    c"fw_norm_apply_nhwc_f16",
                    c"fw_norm_coefficients",
                    c"fw_pad_nhwc_16",
                    c"fw_pad_nhwc_4",
                    c"fw_pad_nhwc_2",
                    c"fw_pixels_in",
                ];
                for (slot, name) in f.iter_mut().zip(names) {
                    check(
                        d,
                        (d.module_get_function)(slot, module, name.as_ptr()),
                        "cuModuleGetFunction",
                    )?;
                }
                let k = NormKernels {
                    ctx: ctx as usize,
                    stats: f[0] as usize,
                    apply: f[1] as usize,
                    stats_nhwc: [f[2] as usize, f[3] as usize],
                    apply_nhwc: [f[4] as usize, f[5] as usize],
                    coefficients: f[6] as usize,
                    pad_nhwc: [f[7] as usize, f[8] as usize, f[9] as usize],
                    pixels_in: f[10] as usize,
                };
                map.insert(device, k);
                k
            }
        };
        Ok(k)
    }
}

/// CU_STREAM_CAPTURE_MODE_THREAD_LOCAL in cuda.h.
const CAPTURE_MODE_THREAD_LOCAL: u32 = 1;

/// Lets this thread's CUDA calls go on while another thread captures a CUDA graph. ONNX Runtime
/// captures in global mode, where a synchronising call from any other thread in that mode fails
/// ("operation not permitted when stream is capturing") and spoils the capture; measured with
/// 2 and 8 sessions of one process. Every thread that calls CUDA while graphs may be captured
/// (inference, NVDEC decoding) calls this first; once per thread, later calls cost nothing.
pub fn ignore_other_captures() {
    thread_local!(static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    if DONE.get() {
        return;
    }
    DONE.set(true);
    // No driver, no GPU: nothing can capture either.
    let Ok(d) = driver() else { return };
    let mut mode = CAPTURE_MODE_THREAD_LOCAL;
    // SAFETY: an in-out pointer to a local, as cuda.h declares.
    let rc = unsafe { (d.exchange_capture_mode)(&mut mode) };
    if let Err(e) = check(d, rc, "cuThreadExchangeStreamCaptureMode") {
        tracing::warn!(error = %e, "CUDA capture mode not set");
    }
}

/// GPU `device`'s primary context (the one ONNX Runtime uses), made current on this thread.
fn primary_current(d: &Driver, device: i32) -> Result<*mut c_void, String> {
    let mut dev = 0i32;
    let mut ctx = std::ptr::null_mut();
    // SAFETY: driver calls with out-pointers to locals. Retained once per pinned buffer and
    // not released: the primary context lives as long as the process anyway.
    unsafe {
        check(d, (d.device_get)(&mut dev, device), "cuDeviceGet")?;
        check(
            d,
            (d.primary_ctx_retain)(&mut ctx, dev),
            "cuDevicePrimaryCtxRetain",
        )?;
        make_current(d, ctx)?;
    }
    Ok(ctx)
}

/// Page-locked host memory: copies between it and the GPU are DMA without a staging copy, and
/// a copy from it to the GPU has finished when the call returns (CUDA graph runs rely on that).
pub struct Pinned {
    ptr: *mut u8,
    len: usize,
    /// The primary context of the buffer's GPU, current for its copies.
    ctx: usize,
}

// SAFETY: the buffer is plain host memory owned by this value.
unsafe impl Send for Pinned {}

impl Pinned {
    /// `len` bytes on GPU `device`'s primary context, usable from any context (PORTABLE).
    pub fn new(device: i32, len: usize) -> Result<Self, String> {
        let d = driver()?;
        let ctx = primary_current(d, device)? as usize;
        let mut p = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; CU_MEMHOSTALLOC_PORTABLE = 1.
        unsafe {
            check(
                d,
                (d.mem_host_alloc)(&mut p, len.max(1), 1),
                "cuMemHostAlloc",
            )?
        };
        Ok(Self {
            ptr: p.cast(),
            len,
            ctx,
        })
    }

    /// The buffer's bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes allocated in `new`, alive while self is.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The buffer's bytes, to fill.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and &mut self makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// Copies the first `len` bytes to device address `dst` on the buffer's GPU; they are
    /// there when this returns (a copy from pinned memory is synchronous with the host).
    ///
    /// # Safety
    /// `dst` is live device memory of at least `len` bytes that no queued work still reads.
    pub unsafe fn to_device(&self, dst: u64, len: usize) -> Result<(), String> {
        let src = self.ptr.cast();
        // SAFETY: the caller vouches for dst; `copy` checks the source holds len bytes.
        self.copy(len, "cuMemcpyHtoD", |d| unsafe {
            (d.memcpy_htod)(dst, src, len)
        })
    }

    /// Copies `len` bytes from device address `src` on the buffer's GPU into the buffer's
    /// start; the copy has finished when this returns.
    ///
    /// # Safety
    /// `src` is live device memory of at least `len` bytes whose writers have finished.
    pub unsafe fn from_device(&mut self, src: u64, len: usize) -> Result<(), String> {
        let dst = self.ptr.cast();
        // SAFETY: the caller vouches for src; `copy` checks the destination holds len bytes.
        self.copy(len, "cuMemcpyDtoH", |d| unsafe {
            (d.memcpy_dtoh)(dst, src, len)
        })
    }

    /// Runs one copy of `len` bytes of this buffer with its GPU's context current.
    fn copy(
        &self,
        len: usize,
        call: &str,
        f: impl FnOnce(&Driver) -> CuResult,
    ) -> Result<(), String> {
        if len > self.len {
            return Err(format!(
                "{call} of {len} bytes with a {}-byte buffer",
                self.len
            ));
        }
        let d = driver()?;
        // SAFETY: the context was retained for this buffer in `new` and is never destroyed.
        unsafe { make_current(d, self.ctx as *mut c_void)? };
        check(d, f(d), call)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Ok(d) = driver() {
            // SAFETY: allocated by cuMemHostAlloc in `new`, freed once.
            let rc = unsafe { (d.mem_free_host)(self.ptr.cast()) };
            if let Err(e) = check(d, rc, "cuMemFreeHost") {
                tracing::warn!(error = %e, "pinned buffer not freed");
            }
        }
    }
}

/// Sets `ctx` current on this thread unless it already is.
unsafe fn make_current(d: &Driver, ctx: *mut c_void) -> Result<(), String> {
    let mut cur = std::ptr::null_mut();
    check(d, (d.ctx_get_current)(&mut cur), "cuCtxGetCurrent")?;
    if cur != ctx {
        check(d, (d.ctx_set_current)(ctx), "cuCtxSetCurrent")?;
    }
    Ok(())
}

/// The launch geometry of one fused normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NormPlan {
    planes: u32,
    splits: u32,
    plane: i64,
    channels: i32,
    gamma_per_image: i32,
    beta_per_image: i32,
    styles: i32,
    /// Blocks per plane of the second kernel (it covers the output plane, padded or not).
    apply_splits: u32,
    in_w: i32,
    out_h: i32,
    out_w: i32,
    pad_top: i32,
    pad_left: i32,
    /// x is [N, H, W, C]: the three channels-last kernels, grids over images.
    channels_last: bool,
    images: u32,
    in_h: i32,
    /// Values (NCHW) or pixels (channels last) one block of the first kernel sums.
    chunk: i32,
    /// Nearest upsampling folded into the output (channels last).
    upsample: i32,
    /// X / Y are space to depth (`Layout::in_s2d`, `out_s2d`): 1, else 0.
    in_s2d: i32,
    out_s2d: i32,
    /// Pixels stored per image of X (the statistics kernel's range; more than `plane` when
    /// space to depth rounds an odd side up), and the image size whose pixels it counts when
    /// it must skip the rest (0, 0: every stored pixel counts).
    stored: i64,
    mask_h: i32,
    mask_w: i32,
}

impl NormPlan {
    /// Rejects what one launch cannot cover (grid.y holds at most 65,535 planes).
    pub fn new(l: &Layout) -> Result<Self, String> {
        let planes = l.images * l.channels;
        let chunk = if l.channels_last {
            if l.channels > NORM_THREADS as usize || l.images > 65_535 {
                return Err(format!(
                    "{} images x {} channels: the channels-last kernels take at most 65,535 images and {NORM_THREADS} channels",
                    l.images, l.channels
                ));
            }
            (NHWC_CHUNK / l.channels).max(1)
        } else {
            if planes > 65_535 {
                return Err(format!(
                    "{} images x {} channels is more than the 65,535 planes one launch covers",
                    l.images, l.channels
                ));
            }
            NORM_CHUNK as usize
        };
        let stored = l.stored_pixels();
        let splits = stored.div_ceil(chunk).max(1);
        let (out_h, out_w) = l.out_hw();
        let in_h = l.plane / l.width;
        let mask = l.in_s2d && (in_h % 2 == 1 || l.width % 2 == 1);
        let too_large = || format!("planes of {} values are too large", l.plane);
        let int = |v: usize| i32::try_from(v).map_err(|_| too_large());
        Ok(Self {
            apply_splits: u32::try_from(apply_blocks(l, out_h, out_w)).map_err(|_| too_large())?,
            channels_last: l.channels_last,
            images: l.images as u32,
            in_h: int(in_h)?,
            in_s2d: l.in_s2d.into(),
            out_s2d: l.out_s2d.into(),
            stored: stored as i64,
            mask_h: if mask { int(in_h)? } else { 0 },
            mask_w: if mask { int(l.width)? } else { 0 },
            chunk: int(chunk)?,
            upsample: int(l.upsample)?,
            in_w: int(l.width)?,
            out_h: int(out_h)?,
            out_w: int(out_w)?,
            pad_top: int(l.pads.top)?,
            pad_left: int(l.pads.left)?,
            planes: planes as u32,
            splits: u32::try_from(splits).map_err(|_| too_large())?,
            plane: l.plane as i64,
            channels: l.channels as i32,
            gamma_per_image: l.gamma_per_image as i32,
            beta_per_image: l.beta_per_image as i32,
            styles: i32::try_from(l.styles)
                .map_err(|_| format!("{} styles are too many", l.styles))?,
        })
    }

    /// Floats of GPU scratch the launch needs: per plane, two sums per split and the shift.
    /// Channels last also keeps each plane's three coefficients there.
    pub fn scratch_floats(&self) -> usize {
        let coefficients = if self.channels_last { 3 } else { 0 };
        self.planes as usize * (2 * self.splits as usize + 1 + coefficients)
    }
}

/// Blocks per plane of fw_norm_apply: chunks of NORM_CHUNK values, or with padding groups of
/// max(1, NORM_CHUNK / out_w) whole rows (the kernel's own split). Channels last: one per output
/// row (an even number of them when the output is space to depth).
fn apply_blocks(l: &Layout, out_h: usize, out_w: usize) -> usize {
    if l.channels_last {
        if l.out_s2d {
            out_h.next_multiple_of(2)
        } else {
            out_h
        }
    } else if !l.padded() {
        (out_h * out_w).div_ceil(NORM_CHUNK as usize).max(1)
    } else {
        out_h.div_ceil((NORM_CHUNK as usize / out_w).max(1)).max(1)
    }
}

/// Device addresses of a launch's tensors; params are scale, bias, gamma, beta; mix the style
/// weights (0 without).
pub struct NormPtrs {
    pub x: u64,
    pub y: u64,
    pub scratch: u64,
    pub params: [u64; 4],
    pub mix: u64,
    /// Added to the result (channels last), X's shape; 0 for none.
    pub residual: u64,
}

/// Queues the kernels on `stream` (ONNX Runtime's, so they run in order with the graph): two
/// for NCHW float, three for channels last (float or `half` values).
///
/// # Safety
/// `stream` is a CUDA stream of `k`'s device, and `t` holds addresses of live memory on it: x
/// and y of `p`'s input and output (the same address only without padding and not channels
/// last), of f32 values or, with `half`, f16 ones; the scratch of `p.scratch_floats()`; scale
/// and bias of one value per channel, gamma and beta as `p` was planned for, mix (unless 0)
/// p's styles. The kernels read and write them after this returns, in stream order.
pub unsafe fn launch_norm(
    k: &NormKernels,
    stream: *mut c_void,
    p: &NormPlan,
    t: &NormPtrs,
    eps: f32,
    relu: bool,
    half: bool,
) -> Result<(), String> {
    let d = driver()?;
    unsafe { make_current(d, k.ctx as *mut c_void)? };
    if half && !p.channels_last {
        return Err("half values need the channels-last kernels".into());
    }
    // 16-byte loads and stores: 4 floats along an NCHW plane, or 4 floats / 8 halves of one
    // pixel channels last (t.residual is 0 when absent).
    let lanes: (i64, i64) = if p.channels_last {
        (p.channels.into(), if half { 8 } else { 4 })
    } else {
        (p.plane, 4)
    };
    let vec = i32::from(
        lanes.0 % lanes.1 == 0 && [t.x, t.y, t.residual].iter().all(|a| a.is_multiple_of(16)),
    );
    let (mut x, mut y, mut s) = (t.x, t.y, t.scratch);
    let [mut scale, mut bias, mut gamma, mut beta] = t.params;
    let (mut plane, mut splits, mut channels) = (p.plane, p.splits as i32, p.channels);
    let (mut gpi, mut bpi, mut eps) = (p.gamma_per_image, p.beta_per_image, eps);
    let (mut mix, mut styles) = (t.mix, p.styles);
    let (mut in_w, mut out_h, mut out_w) = (p.in_w, p.out_h, p.out_w);
    let (mut pad_top, mut pad_left, mut in_h) = (p.pad_top, p.pad_left, p.in_h);
    let (mut chunk, mut vec, mut relu) = (p.chunk, vec, i32::from(relu));
    // The coefficients (channels last) follow the partial sums in the scratch.
    let mut coef = t.scratch + 4 * (p.planes as u64 * (2 * p.splits as u64 + 1));
    fn arg<T>(v: &mut T) -> *mut c_void {
        (v as *mut T).cast()
    }
    // SAFETY: the functions are this module's kernels; each argument array matches its kernel's
    // parameter list in instance_norm.cu (pointers as u64, ints as i32, plane as i64).
    let launch = |f: usize, grid: (u32, u32), args: &mut [*mut c_void], name: &str| unsafe {
        launch_on(d, stream, f, grid, args, name)
    };
    if p.channels_last {
        let h = usize::from(half);
        let (mut up, mut res) = (p.upsample, t.residual);
        let (mut stored, mut mask_h, mut mask_w) = (p.stored, p.mask_h, p.mask_w);
        let (mut in_s2d, mut out_s2d) = (p.in_s2d, p.out_s2d);
        launch(
            k.stats_nhwc[h],
            (p.splits, p.images),
            &mut [
                arg(&mut x),
                arg(&mut s),
                arg(&mut stored),
                arg(&mut channels),
                arg(&mut chunk),
                arg(&mut vec),
                arg(&mut mask_h),
                arg(&mut mask_w),
            ],
            "fw_norm_stats_nhwc",
        )?;
        launch(
            k.coefficients,
            (p.planes, 1),
            &mut [
                arg(&mut s),
                arg(&mut splits),
                arg(&mut plane),
                arg(&mut scale),
                arg(&mut bias),
                arg(&mut gamma),
                arg(&mut beta),
                arg(&mut channels),
                arg(&mut gpi),
                arg(&mut bpi),
                arg(&mut eps),
                arg(&mut mix),
                arg(&mut styles),
                arg(&mut coef),
            ],
            "fw_norm_coefficients",
        )?;
        return launch(
            k.apply_nhwc[h],
            (p.apply_splits, p.images),
            &mut [
                arg(&mut x),
                arg(&mut y),
                arg(&mut coef),
                arg(&mut channels),
                arg(&mut in_h),
                arg(&mut in_w),
                arg(&mut out_h),
                arg(&mut out_w),
                arg(&mut pad_top),
                arg(&mut pad_left),
                arg(&mut relu),
                arg(&mut vec),
                arg(&mut up),
                arg(&mut res),
                arg(&mut in_s2d),
                arg(&mut out_s2d),
            ],
            "fw_norm_apply_nhwc",
        );
    }
    launch(
        k.stats,
        (p.splits, p.planes),
        &mut [
            arg(&mut x),
            arg(&mut s),
            arg(&mut plane),
            arg(&mut chunk),
            arg(&mut vec),
        ],
        "fw_norm_stats",
    )?;
    launch(
        k.apply,
        (p.apply_splits, p.planes),
        &mut [
            arg(&mut x),
            arg(&mut y),
            arg(&mut s),
            arg(&mut splits),
            arg(&mut plane),
            arg(&mut chunk),
            arg(&mut vec),
            arg(&mut scale),
            arg(&mut bias),
            arg(&mut gamma),
            arg(&mut beta),
            arg(&mut channels),
            arg(&mut gpi),
            arg(&mut bpi),
            arg(&mut eps),
            arg(&mut relu),
            arg(&mut mix),
            arg(&mut styles),
            arg(&mut in_w),
            arg(&mut out_h),
            arg(&mut out_w),
            arg(&mut pad_top),
            arg(&mut pad_left),
        ],
        "fw_norm_apply",
    )
}

/// Queues kernel `f` on `stream`, grid (x, y) of NORM_THREADS-thread blocks.
///
/// # Safety
/// `f` is one of this module's kernels on `stream`'s device and `args` points at values that
/// match its parameter list, alive for this call.
unsafe fn launch_on(
    d: &Driver,
    stream: *mut c_void,
    f: usize,
    grid: (u32, u32),
    args: &mut [*mut c_void],
    name: &str,
) -> Result<(), String> {
    check(
        d,
        unsafe {
            (d.launch_kernel)(
                f as *mut c_void,
                grid.0,
                grid.1,
                1,
                NORM_THREADS,
                1,
                1,
                0,
                stream,
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        },
        &format!("cuLaunchKernel({name})"),
    )
}

/// One channels-last reflect pad: [N, H, W, C] of `elem` bytes per value into [N, H + top +
/// bottom, W + left + right, C], or that space to depth (`s2d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PadPlan {
    pub images: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub channels: usize,
    pub elem: usize,
    pub pads: crate::norm_op::Pads,
    pub s2d: bool,
}

impl PadPlan {
    /// The copy unit (16, 4 or 2 bytes) for these addresses, and units per pixel; rejects what
    /// one launch cannot cover.
    fn unit(&self, x: u64, y: u64) -> Result<(usize, usize), String> {
        let bytes = self.channels * self.elem;
        let unit = [16usize, 4, 2]
            .into_iter()
            .find(|&u| {
                bytes.is_multiple_of(u) && x.is_multiple_of(u as u64) && y.is_multiple_of(u as u64)
            })
            .ok_or_else(|| format!("pixels of {bytes} bytes cannot be copied in 2-byte units"))?;
        let units = bytes / unit;
        if units > NORM_THREADS as usize || self.images > 65_535 {
            return Err(format!(
                "{} images of {bytes}-byte pixels: the pad kernel takes at most 65,535 images and {} units of {unit} bytes per pixel",
                self.images, NORM_THREADS
            ));
        }
        Ok((unit, units))
    }
}

/// Queues the channels-last reflect pad on `stream`.
///
/// # Safety
/// `stream` is a CUDA stream of `k`'s device; x and y are live device memory of `p`'s input
/// and output, read and written after this returns, in stream order.
pub unsafe fn launch_pad(
    k: &NormKernels,
    stream: *mut c_void,
    p: &PadPlan,
    x: u64,
    y: u64,
) -> Result<(), String> {
    let d = driver()?;
    unsafe { make_current(d, k.ctx as *mut c_void)? };
    let (unit, units) = p.unit(x, y)?;
    let f = k.pad_nhwc[match unit {
        16 => 0,
        4 => 1,
        _ => 2,
    }];
    let int = |v: usize| i32::try_from(v).map_err(|_| format!("{v} is too large for the pad"));
    let (out_h, out_w) = (
        p.in_h + p.pads.top + p.pads.bottom,
        p.in_w + p.pads.left + p.pads.right,
    );
    let (mut x, mut y) = (x, y);
    let mut ints = [
        int(units)?,
        int(p.in_h)?,
        int(p.in_w)?,
        int(out_h)?,
        int(out_w)?,
        int(p.pads.top)?,
        int(p.pads.left)?,
        i32::from(p.s2d),
    ];
    let mut args: Vec<*mut c_void> = vec![(&mut x as *mut u64).cast(), (&mut y as *mut u64).cast()];
    args.extend(ints.iter_mut().map(|v| (v as *mut i32).cast::<c_void>()));
    // Space to depth: an even number of rows (an odd image's last one is zeros).
    let rows = if p.s2d {
        out_h.next_multiple_of(2)
    } else {
        out_h
    };
    let grid = (
        u32::try_from(rows).map_err(|e| e.to_string())?,
        p.images as u32,
    );
    // SAFETY: fw_pad_nhwc_*'s parameters are (x, y, units, in_h, in_w, out_h, out_w, pad_top,
    // pad_left, s2d): two pointers and eight ints, as `args` holds them.
    unsafe { launch_on(d, stream, f, grid, &mut args, "fw_pad_nhwc") }
}

/// Queues the image input's copy (RGB) or conversion (NV12) on `stream`: `dims` (images, height,
/// width, nv12) as `pixels_op::dims` read them.
///
/// # Safety
/// `stream` is a CUDA stream of `k`'s device; x and y are live device memory of the op's input
/// and output for `dims`, read and written after this returns, in stream order.
pub unsafe fn launch_pixels(
    k: &NormKernels,
    stream: *mut c_void,
    dims: (usize, usize, usize, bool),
    yuv: &crate::pixels_op::Yuv,
    x: u64,
    y: u64,
) -> Result<(), String> {
    let d = driver()?;
    unsafe { make_current(d, k.ctx as *mut c_void)? };
    let (images, h, w, nv12) = dims;
    let int =
        |v: usize| i32::try_from(v).map_err(|_| format!("{v} is too large for the image input"));
    let blocks = (h * w).div_ceil(NORM_THREADS as usize);
    let grid = (
        u32::try_from(blocks).map_err(|e| e.to_string())?,
        u32::try_from(images)
            .ok()
            .filter(|&n| n <= 65_535)
            .ok_or_else(|| format!("{images} images: the image input takes at most 65,535"))?,
    );
    let (mut x, mut y) = (x, y);
    let mut ints = [int(h)?, int(w)?, i32::from(nv12)];
    let mut floats = yuv.values();
    let mut args: Vec<*mut c_void> = vec![(&mut x as *mut u64).cast(), (&mut y as *mut u64).cast()];
    args.extend(ints.iter_mut().map(|v| (v as *mut i32).cast::<c_void>()));
    args.extend(floats.iter_mut().map(|v| (v as *mut f32).cast::<c_void>()));
    // SAFETY: fw_pixels_in's parameters are (x, y, h, w, nv12, m0..m8, o0..o2): two pointers,
    // three ints and twelve floats, as `args` holds them.
    unsafe { launch_on(d, stream, k.pixels_in, grid, &mut args, "fw_pixels_in") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::norm_op::{layout, Pads};

    #[test]
    fn launch_geometry_covers_every_plane_and_row() {
        let none = Pads::default();
        let x = [1i64, 32, 720, 1280];
        let per = [1i64, 32, 1, 1];
        let l = layout(&x, &[32], &[32], &per, &per, None, none, false).unwrap();
        let p = NormPlan::new(&l).unwrap();
        // 921,600 values per plane in chunks of 8,192: 113 blocks for each pass.
        assert_eq!((p.planes, p.splits, p.apply_splits), (32, 113, 113));
        assert_eq!(p.scratch_floats(), 32 * (2 * 113 + 1));
        // Padded by 4 (a 9x9 convolution next): rows of 1,288, 6 per block, 728 rows.
        let pads = Pads::uniform(4);
        let l = layout(&x, &[32], &[32], &per, &per, None, pads, false).unwrap();
        let p = NormPlan::new(&l).unwrap();
        assert_eq!(
            (p.splits, p.apply_splits, p.out_h, p.out_w),
            (113, 122, 728, 1288)
        );
        // Rows wider than a chunk: one row per block.
        let wide = [1i64, 2, 3, 10_000];
        let one = Pads::uniform(1);
        let l = layout(
            &wide,
            &[2],
            &[2],
            &[1, 2, 1, 1],
            &[1, 2, 1, 1],
            None,
            one,
            false,
        )
        .unwrap();
        assert_eq!(NormPlan::new(&l).unwrap().apply_splits, 5);
        // More planes than one launch's grid.y holds.
        let many = [1024i64, 128, 2, 2];
        let per = [1024i64, 128, 1, 1];
        let l = layout(&many, &[128], &[128], &per, &per, None, none, false).unwrap();
        assert!(NormPlan::new(&l).unwrap_err().contains("65,535"));
    }

    #[test]
    fn channels_last_geometry_and_pad_units() {
        // [1, 720, 1280, 32] padded by 4: 512 pixels per statistics block, one block per
        // output row, the coefficients after the partial sums; at most 256 channels.
        let four = Pads::uniform(4);
        let per = [1i64, 32, 1, 1];
        let x = [1i64, 720, 1280, 32];
        let l = layout(&x, &[32], &[32], &per, &per, None, four, true).unwrap();
        let p = NormPlan::new(&l).unwrap();
        assert_eq!((p.splits, p.apply_splits, p.chunk), (1800, 728, 512));
        assert_eq!(p.scratch_floats(), 32 * (2 * 1800 + 1 + 3));
        let l = l.with_extras(2, None, &x).unwrap();
        assert_eq!(NormPlan::new(&l).unwrap().apply_splits, 2 * 720 + 8);
        let wide = [1i64, 4, 4, 300];
        let w = [1i64, 300, 1, 1];
        let l = layout(&wide, &[300], &[300], &w, &w, None, Pads::default(), true).unwrap();
        assert!(NormPlan::new(&l).unwrap_err().contains("256 channels"));
        // The pad copies 16 bytes at a time where pixels and addresses allow, else less.
        let pad = |channels, elem| PadPlan {
            images: 1,
            in_h: 8,
            in_w: 8,
            channels,
            elem,
            pads: four,
            s2d: false,
        };
        assert_eq!(pad(32, 2).unit(0, 256).unwrap(), (16, 4));
        assert_eq!(pad(32, 2).unit(0, 4).unwrap(), (4, 16));
        assert_eq!(pad(3, 2).unit(0, 256).unwrap(), (2, 3));
        assert_eq!(pad(3, 4).unit(0, 256).unwrap(), (4, 3));
        assert!(pad(2048, 4).unit(0, 256).unwrap_err().contains("256 units"));
    }

    #[test]
    fn space_to_depth_geometry() {
        // The first normalisation of the space-to-depth model at 1281x721: X stores 361 x 641
        // blocks of 4 pixels (more than the image's), the statistics kernel covers them all
        // and skips what lies past the odd sides; at 1280x720 nothing is skipped.
        let per = [1i64, 32, 1, 1];
        let one = Pads::uniform(1);
        let plan = |h: i64, w: i64, pads: Pads, out_s2d: bool| {
            let l = layout(&[1, h, w, 32], &[32], &[32], &per, &per, None, pads, true)
                .and_then(|l| l.with_space_to_depth(!out_s2d, out_s2d))
                .unwrap();
            NormPlan::new(&l).unwrap()
        };
        let p = plan(721, 1281, one, false);
        assert_eq!(p.stored, 4 * 361 * 641);
        assert_eq!((p.mask_h, p.mask_w, p.in_s2d, p.out_s2d), (721, 1281, 1, 0));
        assert_eq!(p.plane, 721 * 1281);
        assert_eq!(p.splits as usize, (p.stored as usize).div_ceil(512));
        assert_eq!(p.apply_splits, 723);
        let p = plan(720, 1280, one, false);
        assert_eq!((p.stored, p.mask_h, p.mask_w), (720 * 1280, 0, 0));
        // Writing blocks: an even number of output rows (an odd image's last one zeros).
        let four = Pads::uniform(4);
        let p = plan(721, 1281, four, true);
        assert_eq!((p.in_s2d, p.out_s2d, p.apply_splits), (0, 1, 730));
        assert_eq!(plan(720, 1280, four, true).apply_splits, 728);
    }
}
