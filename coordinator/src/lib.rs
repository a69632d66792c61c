//! The framewise coordinator: actix actors own jobs, tasks and leases (in
//! sled); tonic serves users (JobService) and workers (WorkerService).
//! It links neither GStreamer nor ONNX Runtime.

pub mod convert;
pub mod grpc;
pub mod manager;
pub mod model;
pub mod scheduler;
pub mod server;
pub mod store;

pub use server::{start, Coordinator, StartError};
