//! Types shared by the coordinator and the workers: configuration, the wire
//! protocol, segment planning, style weights and storage locations.

pub mod bearer;
pub mod config;
pub mod device;
pub mod plan;
pub mod process;
pub mod storage;
pub mod style;

/// The largest gRPC message a framewise client (worker, CLI) accepts: a lease or job can
/// carry every frame's timestamp of a long video (tonic's 4 MiB default held about 600,000).
pub const CLIENT_MAX_MESSAGE_BYTES: usize = 256 << 20;

/// The largest request the coordinator decodes: room for a probe result of `max_frames`
/// frames (a timestamp and a keyframe index each, up to 10 bytes apiece as varints), at
/// least 16 MiB; anything larger is refused with OutOfRange naming both sizes.
pub fn request_limit_bytes(max_frames: u64) -> usize {
    let need = max_frames.saturating_mul(20).saturating_add(1 << 20);
    need.clamp(16 << 20, CLIENT_MAX_MESSAGE_BYTES as u64) as usize
}

/// Generated gRPC code for `proto/framewise.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("framewise.v1");
}
