//! One CUDA context per GPU for every NVDEC decode pipeline of the process. GStreamer 1.22's
//! nvcodec otherwise creates a new CUDA context for each decoder it starts, under one
//! process-wide lock: measured on an H100 with 8 pipelines starting their ranges at once, the
//! first frames came 0.33, 0.49, 0.73 … 2.35 s after the start (about 0.3 s per context, one
//! after the other), 10–15 % of every pipeline's time on a 6-minute job. The first decoder's
//! context (its `have-context` message) is kept and handed to every later pipeline on that
//! GPU, through the pipeline (GstBin passes its contexts on to the elements added to it) and
//! through `need-context` (GStreamer's way for an element to ask the application).
//!
//! Measured and not kept (BENCHMARKS.md, session 14): giving the decoders the sessions' primary
//! context made decoders wait up to 4.8 s to start behind the sessions' work, and a context of
//! framewise's own with blocking sync (GStreamer's own contexts spin while they wait) ran level
//! with this one.

use gstreamer as gst;
use gstreamer::prelude::*;
use std::sync::Mutex;

/// GStreamer's name for a context holding a `GstCudaContext` (GST_CUDA_CONTEXT_TYPE).
const CUDA_CONTEXT_TYPE: &str = "gst.cuda.context";

/// The kept contexts, by GPU index (a handful at most).
static CONTEXTS: Mutex<Vec<(u32, gst::Context)>> = Mutex::new(Vec::new());

/// The kept CUDA context of `gpu`, if a decoder there has made one.
fn kept(gpu: u32) -> Option<gst::Context> {
    let list = CONTEXTS.lock().unwrap_or_else(|p| p.into_inner());
    list.iter().find(|(g, _)| *g == gpu).map(|(_, c)| c.clone())
}

/// Keeps `ctx` as `gpu`'s context unless one is kept already (the first one stays: every
/// pipeline then shares it). Returns whether it was kept.
fn keep(gpu: u32, ctx: &gst::Context) -> bool {
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
    // This thread starts the decoder (and with it CUDA calls) through the state changes.
    crate::cuda::ignore_other_captures();
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
            // Posted by a streaming thread as it starts (the decoder's included): its CUDA
            // calls must not fail while a session captures a CUDA graph.
            gst::MessageView::StreamStatus(m) if m.get().0 == gst::StreamStatusType::Enter => {
                crate::cuda::ignore_other_captures();
            }
            _ => {}
        }
        gst::BusSyncReply::Pass
    });
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
