//! The one CUDA driver setting framewise makes itself. By default a thread waiting for the GPU
//! (ONNX Runtime synchronises its stream after every run) spins on a core while the process has
//! fewer CUDA contexts than cores; with several pipelines per GPU that is several cores taken
//! from x264 and the decoders. Blocking sync makes the waiting thread sleep instead.

use libloading::{Library, Symbol};
use std::collections::HashSet;
use std::sync::Mutex;

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
    // SAFETY: libcuda.so.1 is the NVIDIA driver's library; the three functions are called with
    // the signatures cuda.h declares (CUresult is an int, CUdevice an int), and the library
    // stays loaded for the life of the process (ONNX Runtime's CUDA provider uses it too).
    unsafe {
        let lib = Library::new("libcuda.so.1").map_err(|e| format!("libcuda.so.1: {e}"))?;
        let init: Symbol<unsafe extern "C" fn(u32) -> i32> =
            lib.get(b"cuInit\0").map_err(|e| e.to_string())?;
        let get: Symbol<unsafe extern "C" fn(*mut i32, i32) -> i32> =
            lib.get(b"cuDeviceGet\0").map_err(|e| e.to_string())?;
        let set: Symbol<unsafe extern "C" fn(i32, u32) -> i32> = lib
            .get(b"cuDevicePrimaryCtxSetFlags_v2\0")
            .map_err(|e| e.to_string())?;
        let rc = init(0);
        if rc != 0 {
            return Err(format!("cuInit failed with CUresult {rc}"));
        }
        let mut dev = 0i32;
        let rc = get(&mut dev, device as i32);
        if rc != 0 {
            return Err(format!("cuDeviceGet({device}) failed with CUresult {rc}"));
        }
        let rc = set(dev, SCHED_BLOCKING_SYNC);
        if rc != 0 {
            return Err(format!(
                "cuDevicePrimaryCtxSetFlags on GPU {device} failed with CUresult {rc}"
            ));
        }
        std::mem::forget(lib);
    }
    Ok(())
}
