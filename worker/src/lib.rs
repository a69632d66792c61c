//! The framewise worker: GStreamer media, ONNX Runtime inference, the segment
//! pipeline and the lease loop that talks to the coordinator.

pub mod agent;
pub mod conv_op;
pub mod cpu_op;
pub mod cuda;
pub mod error;
pub mod graph_run;
pub mod inference;
pub mod media;
pub mod narrow_conv_op;
pub mod norm_op;
pub mod op_threads;
pub mod optimize;
pub mod pad_op;
pub mod pixels_op;
pub mod preemption;
pub mod segment;
pub mod tasklog;
pub mod variant;
