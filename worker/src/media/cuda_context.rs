//! One CUDA context per GPU for every NVDEC decode pipeline of the process. GStreamer 1.22's
//! nvcodec otherwise creates a new CUDA context for each decoder it starts, under one
//! process-wide lock: measured on an H100 with 8 pipelines starting their ranges at once, the
//! first frames came 0.33, 0.49, 0.73 … 2.35 s after the start (about 0.3 s per context, one
//! after the other), 10–15 % of every pipeline's time on a 6-minute job. The context given to
//! the decoders wraps the GPU's primary context, the one ONNX Runtime uses, so they wait for the
//! GPU the way the sessions do (blocking sync, cuda.rs: GStreamer's own contexts spin); where
//! that cannot be made, the first decoder's own context (its `have-context` message) is kept.
//! Either is handed to every later pipeline on that GPU, through the pipeline (GstBin passes its
//! contexts on to the elements added to it) and through `need-context` (GStreamer's way for an
//! element to ask the application).

use gstreamer as gst;
use gstreamer::glib::translate::from_glib_full;
use gstreamer::prelude::*;
use libloading::Library;
use std::ffi::c_void;
use std::sync::{Mutex, OnceLock};

/// GStreamer's name for a context holding a `GstCudaContext` (GST_CUDA_CONTEXT_TYPE).
pub(crate) const CUDA_CONTEXT_TYPE: &str = "gst.cuda.context";

/// The kept contexts, by GPU index (a handful at most).
static CONTEXTS: Mutex<Vec<(u32, gst::Context)>> = Mutex::new(Vec::new());

/// The kept CUDA context of `gpu`, if a decoder there has made one.
pub(crate) fn kept(gpu: u32) -> Option<gst::Context> {
    let list = CONTEXTS.lock().unwrap_or_else(|p| p.into_inner());
    list.iter().find(|(g, _)| *g == gpu).map(|(_, c)| c.clone())
}

/// Keeps `ctx` as `gpu`'s context unless one is kept already (the first one stays: every
/// pipeline then shares it). Returns whether it was kept.
pub(crate) fn keep(gpu: u32, ctx: &gst::Context) -> bool {
    if !ctx.has_context_type(CUDA_CONTEXT_TYPE) {
        return false;
    }
    let mut list = CONTEXTS.lock().unwrap_or_else(|p| p.into_inner());
    if list.iter().any(|(g, _)| *g == gpu) {
        return false;
    }
    list.push((gpu, ctx.clone()));
    tracing::debug!(gpu, "keeping the NVDEC decoders' CUDA context");
    true
}

/// Makes `pipeline`'s NVDEC decoder (on `gpu`) use the process's CUDA context for that GPU, or
/// keep the one it creates for the pipelines after it. Call before adding elements.
pub(crate) fn share(pipeline: &gst::Pipeline, gpu: u32) {
    if kept(gpu).is_none() {
        match wrap_primary(gpu) {
            Ok(ctx) => {
                keep(gpu, &ctx);
            }
            Err(e) => tracing::warn!(
                gpu,
                error = %e,
                "NVDEC decoders get a CUDA context of GStreamer's own (they spin while they wait)"
            ),
        }
    }
    if let Some(ctx) = kept(gpu) {
        pipeline.set_context(&ctx);
    }
    let Some(bus) = pipeline.bus() else { return };
    bus.set_sync_handler(move |_, msg| {
        match msg.view() {
            gst::MessageView::NeedContext(m) if m.context_type() == CUDA_CONTEXT_TYPE => {
                let asker = msg.src().and_then(|s| s.downcast_ref::<gst::Element>());
                if let (Some(el), Some(ctx)) = (asker, kept(gpu)) {
                    el.set_context(&ctx);
                }
            }
            gst::MessageView::HaveContext(m) => {
                keep(gpu, &m.context());
            }
            _ => {}
        }
        gst::BusSyncReply::Pass
    });
}

/// libgstcuda's calls that make a GStreamer CUDA context from an existing CUDA context.
struct GstCuda {
    load_library: unsafe extern "C" fn() -> i32,
    new_wrapped: unsafe extern "C" fn(*mut c_void, i32) -> *mut gst::ffi::GstObject,
    new_context: unsafe extern "C" fn(*mut gst::ffi::GstObject) -> *mut gst::ffi::GstContext,
}

static GST_CUDA: OnceLock<Result<GstCuda, String>> = OnceLock::new();

fn gst_cuda() -> Result<&'static GstCuda, String> {
    GST_CUDA
        .get_or_init(|| {
            let name = "libgstcuda-1.0.so.0";
            // SAFETY: the symbols are looked up with the signatures gst/cuda declares (1.22);
            // the library (nvcodec's own, already loaded) is leaked so they stay valid.
            unsafe {
                let lib = Library::new(name).map_err(|e| format!("{name}: {e}"))?;
                let lib = Box::leak(Box::new(lib));
                macro_rules! sym {
                    ($n:literal) => {
                        *lib.get($n).map_err(|e| format!("{name}: {e}"))?
                    };
                }
                Ok(GstCuda {
                    load_library: sym!(b"gst_cuda_load_library\0"),
                    new_wrapped: sym!(b"gst_cuda_context_new_wrapped\0"),
                    new_context: sym!(b"gst_context_new_cuda_context\0"),
                })
            }
        })
        .as_ref()
        .map_err(|e| e.clone())
}

/// A `gst.cuda.context` wrapping `gpu`'s primary CUDA context.
fn wrap_primary(gpu: u32) -> Result<gst::Context, String> {
    let g = gst_cuda()?;
    let (ctx, dev) = crate::cuda::primary_context(gpu)?;
    // SAFETY: libgstcuda's calls as declared; the wrapped CUDA context outlives it (retained
    // for the process); the GstContext holds its own reference to the GstCudaContext.
    unsafe {
        if (g.load_library)() == 0 {
            return Err("GStreamer could not load the CUDA library".into());
        }
        let cuda = (g.new_wrapped)(ctx, dev);
        if cuda.is_null() {
            return Err(format!("gst_cuda_context_new_wrapped failed for GPU {gpu}"));
        }
        let context = (g.new_context)(cuda);
        gst::ffi::gst_object_unref(cuda.cast());
        if context.is_null() {
            return Err(format!("gst_context_new_cuda_context failed for GPU {gpu}"));
        }
        Ok(from_glib_full(context))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cuda_context(tag: i32) -> gst::Context {
        let mut ctx = gst::Context::new(CUDA_CONTEXT_TYPE, true);
        ctx.get_mut()
            .unwrap()
            .structure_mut()
            .set("framewise-test", tag);
        ctx
    }

    fn tag(ctx: &gst::Context) -> i32 {
        ctx.structure().get("framewise-test").unwrap()
    }

    // GPU numbers of their own per test: the kept contexts are the process's.
    #[test]
    fn the_first_context_of_each_gpu_is_kept() {
        gst::init().unwrap();
        assert!(kept(1001).is_none());
        assert!(keep(1001, &cuda_context(1)));
        assert!(!keep(1001, &cuda_context(2)), "a second one is not kept");
        assert!(keep(1002, &cuda_context(3)), "another GPU has its own");
        assert!(!keep(1003, &gst::Context::new("gst.gl.GLDisplay", true)));
        assert_eq!(tag(&kept(1001).unwrap()), 1);
        assert_eq!(tag(&kept(1002).unwrap()), 3);
        assert!(kept(1003).is_none());
    }

    #[test]
    fn a_decoders_context_is_kept_and_handed_to_later_pipelines() {
        gst::init().unwrap();
        // A pipeline started before any decoder made a context: its decoder will ask.
        let early = gst::Pipeline::new();
        share(&early, 1004);
        let asker = gst::ElementFactory::make("identity").build().unwrap();
        early.add(&asker).unwrap();
        assert!(asker.context(CUDA_CONTEXT_TYPE).is_none());

        // The first decoder (here an identity element posting what nvcodec's decoders post)
        // makes a context and announces it.
        let first = gst::Pipeline::new();
        share(&first, 1004);
        let dec = gst::ElementFactory::make("identity").build().unwrap();
        first.add(&dec).unwrap();
        dec.post_message(
            gst::message::HaveContext::builder(cuda_context(7))
                .src(&dec)
                .build(),
        )
        .unwrap();
        assert_eq!(tag(&kept(1004).unwrap()), 7);

        // The early decoder asks and is answered with it.
        asker
            .post_message(
                gst::message::NeedContext::builder(CUDA_CONTEXT_TYPE)
                    .src(&asker)
                    .build(),
            )
            .unwrap();
        assert_eq!(tag(&asker.context(CUDA_CONTEXT_TYPE).unwrap()), 7);

        // A later pipeline gets it before its elements exist, so a decoder added to it, even
        // inside a bin (decodebin), finds it without asking.
        let later = gst::Pipeline::new();
        share(&later, 1004);
        let bin = gst::Bin::new();
        later.add(&bin).unwrap();
        let dec2 = gst::ElementFactory::make("identity").build().unwrap();
        bin.add(&dec2).unwrap();
        assert_eq!(tag(&dec2.context(CUDA_CONTEXT_TYPE).unwrap()), 7);

        // Another GPU's pipeline gets nothing of it.
        let other = gst::Pipeline::new();
        share(&other, 1005);
        assert!(other.context(CUDA_CONTEXT_TYPE).is_none());
    }
}
