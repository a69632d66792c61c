//! The framewise coordinator: actix actors own jobs, tasks and leases (in
//! sled); tonic serves users (JobService) and workers (WorkerService);
//! actix-web serves the dashboard, the REST API and /metrics.
//! It links neither GStreamer nor ONNX Runtime.

pub mod auth;
pub mod autoscaler;
pub mod convert;
#[cfg(test)]
mod fuzz_props;
pub mod grpc;
pub mod janitor;
pub mod manager;
pub mod metrics;
pub mod model;
pub mod progress;
pub mod ratelimit;
pub mod scheduler;
#[cfg(test)]
mod scheduler_props;
pub mod server;
pub mod store;
pub mod tls;
pub mod trigger;
pub mod views;
pub mod web;
pub mod workers;
pub mod writer;

pub use server::{start, Coordinator, StartError};
