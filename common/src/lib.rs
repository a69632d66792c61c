//! Types shared by the coordinator and the workers: configuration, the wire
//! protocol, segment planning, style weights and storage locations.

pub mod bearer;
pub mod config;
pub mod device;
pub mod plan;
pub mod storage;
pub mod style;

/// Generated gRPC code for `proto/framewise.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("framewise.v1");
}
