//! Worker errors. Media errors name the file and say whether the input itself
//! is at fault (permanent: retrying on another worker cannot help).

use std::path::PathBuf;
use thiserror::Error;

/// Why a media operation failed.
#[derive(Debug, Error)]
pub enum MediaError {
    #[error("{0}: file not found")]
    NotFound(PathBuf),
    #[error("{0}: file is empty")]
    Empty(PathBuf),
    #[error("{path}: not a video file ({detail})")]
    NotMedia { path: PathBuf, detail: String },
    #[error("{0}: contains no video stream")]
    NoVideo(PathBuf),
    #[error("{path}: unsupported video codec {codec} (no decoder installed)")]
    UnsupportedCodec { path: PathBuf, codec: String },
    #[error("{path}: its {codec} audio cannot be carried in an MP4 output (AAC, MP3, Opus, AC-3 and ALAC can) and no installed decoder can re-encode it")]
    UnsupportedAudio { path: PathBuf, codec: String },
    #[error("{path}: its audio ({codec}) cannot be read by the installed GStreamer plugins, so it would be lost: install a decoder for it (scripts/bootstrap.sh installs them)")]
    UnparsedAudio { path: PathBuf, codec: String },
    #[error("{path}: damaged or truncated ({detail})")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{path}: timed out after {secs} s while {what}")]
    Timeout {
        path: PathBuf,
        secs: u64,
        what: &'static str,
    },
    #[error("{path}: {what}: {detail}")]
    Pipeline {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("{path}: cannot write: {detail}")]
    Write { path: PathBuf, detail: String },
    /// Uploading to blob storage failed; a refusal (e.g. an expired signed URL) is cured by a
    /// new lease, so this is never permanent.
    #[error("{url}: upload failed: {detail}")]
    Upload {
        url: String,
        detail: String,
        refused: bool,
    },
}

impl MediaError {
    /// True when the input file itself is bad, so no other worker would do better.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            MediaError::NotFound(_)
                | MediaError::Empty(_)
                | MediaError::NotMedia { .. }
                | MediaError::NoVideo(_)
                | MediaError::UnsupportedCodec { .. }
                | MediaError::UnsupportedAudio { .. }
                | MediaError::Corrupt { .. }
        )
    }
}

/// Why the model could not be loaded or run.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error(
        "ONNX Runtime library {path}: {detail} (run scripts/bootstrap.sh, or set ORT_DYLIB_PATH)"
    )]
    Runtime { path: PathBuf, detail: String },
    #[error("model {0}: file not found (run scripts/bootstrap.sh, or set worker.model.path)")]
    NotFound(PathBuf),
    #[error("model {path}: {detail}")]
    Load { path: PathBuf, detail: String },
    #[error("model {path}: wrong shape: {detail}")]
    Shape { path: PathBuf, detail: String },
    #[error("model {path}: inference failed: {detail}")]
    Run { path: PathBuf, detail: String },
    #[error("device {device}: the execution provider did not start: {detail} (set worker.device = \"cpu\" to run on the CPU)")]
    Device { device: String, detail: String },
}
