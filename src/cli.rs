//! Command-line definitions (clap).

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// framewise: style-transfer whole videos on a fleet of workers that may come and go.
#[derive(Parser, Debug)]
#[command(name = "framewise", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Stylize one video with an embedded coordinator and local workers (all in this process).
    Run(RunArgs),
    /// Run a coordinator (gRPC JobService + WorkerService).
    Coordinator {
        /// Config file (TOML); keys can be overridden by FRAMEWISE_* variables.
        #[arg(short, long, default_value = "config/coordinator.toml")]
        config: PathBuf,
    },
    /// Run a worker that pulls tasks from a coordinator.
    Worker {
        #[arg(short, long, default_value = "config/worker.toml")]
        config: PathBuf,
        /// Coordinator URL, e.g. http://10.0.0.4:50051 (overrides the config).
        #[arg(long)]
        coordinator: Option<String>,
        /// auto, cpu, cuda or cuda:N (overrides worker.device).
        #[arg(long)]
        device: Option<String>,
        /// GPUs to use with --device cuda: all, or a list such as 0,2 (overrides worker.gpus).
        #[arg(long)]
        gpus: Option<String>,
        /// This worker's id as the coordinator knows it (overrides worker.worker_id).
        #[arg(long)]
        worker_id: Option<String>,
    },
    /// Submit a job to a running coordinator and print its id.
    Submit(SubmitArgs),
    /// Show jobs (or one job) of a running coordinator.
    Status {
        job: Option<String>,
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        coordinator: String,
        /// Bearer token when the coordinator has a tokens file.
        #[arg(long, env = "FRAMEWISE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// CA certificate (PEM) of an https:// coordinator (default: system roots).
        #[arg(long, env = "FRAMEWISE_CA_FILE")]
        ca_file: Option<PathBuf>,
    },
    /// Cancel a job: running workers stop at their next heartbeat; nothing is written to its output.
    Cancel {
        job: String,
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        coordinator: String,
        /// Bearer token when the coordinator has a tokens file.
        #[arg(long, env = "FRAMEWISE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// CA certificate (PEM) of an https:// coordinator (default: system roots).
        #[arg(long, env = "FRAMEWISE_CA_FILE")]
        ca_file: Option<PathBuf>,
    },
    /// Measure inference alone (no decode or encode): the ceiling end-to-end speed is compared with.
    BenchModel(BenchArgs),
    /// Time decoding alone and encoding alone (the media stages' ceilings).
    BenchMedia(BenchMediaArgs),
    /// Write a rewritten copy of the configured model (what workers run after the quality gate), to inspect or ship it.
    OptimizeModel(OptimizeArgs),
    /// Copy files into or out of storage (file:// or az://) with the credentials of [storage].
    Storage {
        #[arg(short, long)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: StorageCommand,
    },
    /// List the styles of the configured model.
    Styles {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
}

/// `framewise storage` operations.
#[derive(Subcommand, Debug)]
pub enum StorageCommand {
    /// Upload a local file to a URL (its container is created if missing).
    Put { file: PathBuf, url: String },
    /// Download a URL to a local file.
    Get { url: String, file: PathBuf },
    /// List what is under a URL prefix: size, ETag, URL.
    Ls { url: String },
}

/// How to pick the style.
#[derive(Args, Debug, Clone)]
pub struct StyleArgs {
    /// One of the model's styles (0-based).
    #[arg(long, conflicts_with = "style_mix")]
    pub style: Option<i64>,
    /// A blend of styles, e.g. 3:0.5,7:0.5.
    #[arg(long)]
    pub style_mix: Option<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Input video file.
    pub input: PathBuf,
    /// Output MP4 file (written under a temporary name, renamed when complete and verified).
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub style: StyleArgs,
    /// Local workers (default: embedded.workers on a CPU; on GPUs, worker.pipelines_per_gpu per GPU).
    #[arg(long)]
    pub workers: Option<usize>,
    /// auto, cpu, cuda or cuda:N (overrides worker.device).
    #[arg(long)]
    pub device: Option<String>,
    /// Seconds of video per Segment task.
    #[arg(long)]
    pub segment_seconds: Option<f64>,
    /// Stylize a copy scaled so its longer side is at most this many pixels, then scale back (faster on CPU).
    #[arg(long)]
    pub max_size: Option<u32>,
    /// x264 quality (0-51, lower is better).
    #[arg(long)]
    pub crf: Option<u32>,
    /// Config file (default: config/embedded.toml if present).
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// Keep coordinator state here instead of a temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// No progress bar (logs and the summary line only).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// Input video (absolute path or file:// URL as the workers see it).
    pub input: String,
    /// Output location (absolute path or file:// URL).
    #[arg(long)]
    pub out: String,
    #[command(flatten)]
    pub style: StyleArgs,
    #[arg(long, default_value_t = 0.0)]
    pub segment_seconds: f64,
    #[arg(long, default_value_t = 0)]
    pub max_size: u32,
    /// Retrying with the same key returns the same job instead of a new one.
    #[arg(long, default_value = "")]
    pub idempotency_key: String,
    /// Number of styles the workers' model takes.
    #[arg(long, default_value_t = 26)]
    pub style_count: usize,
    /// Follow the job with a progress bar until it ends.
    #[arg(long)]
    pub wait: bool,
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub coordinator: String,
    /// Bearer token when the coordinator has a tokens file (role submitter or admin).
    #[arg(long, env = "FRAMEWISE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) that signed an https:// coordinator's certificate (default: system roots).
    #[arg(long, env = "FRAMEWISE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BenchMediaArgs {
    /// The video to decode (every frame) and whose frames are re-encoded.
    #[arg(long)]
    pub input: PathBuf,
    /// Frames to encode (cycling through the first 50 decoded frames held in memory).
    #[arg(long, default_value_t = 250)]
    pub frames: usize,
    /// Decoders (then encoders) running at once, as a worker's pipelines do; frames/s is their sum.
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Decode to NV12 instead of RGB, as an NVDEC worker does for a model that takes NV12 (sides must be even).
    #[arg(long)]
    pub nv12: bool,
    /// Encode in chunk files of this many frames, each opening with a keyframe and finished
    /// while the next is encoded, as a worker's pipeline writes its checkpoints
    /// (coordinator.chunk_seconds x fps); 0 = one file per stream.
    #[arg(long, default_value_t = 0)]
    pub chunk_frames: usize,
    /// Then stitch every encoded file (all streams' chunks, one after another) with the input's
    /// audio into one MP4, as a job's assembly does, and time it.
    #[arg(long)]
    pub stitch: bool,
    #[arg(short, long)]
    pub config: Option<PathBuf>,
}

/// `framewise bench-model`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Take frames from this video (default: a synthetic 1280x720 gradient).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Synthetic frame size when no input is given, WxH.
    #[arg(long, default_value = "1280x720")]
    pub size: String,
    /// Frames to time (after one warm-up frame).
    #[arg(long, default_value_t = 10)]
    pub frames: usize,
    /// ONNX Runtime intra-op threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Scale like --max-size in `run`.
    #[arg(long, default_value_t = 0)]
    pub max_size: u32,
    /// auto, cpu, cuda or cuda:N (overrides worker.device).
    #[arg(long)]
    pub device: Option<String>,
    /// Sessions running at once (each on its own thread); frames/s is their sum.
    #[arg(long, default_value_t = 1)]
    pub sessions: usize,
    /// Frames per run (when the model takes a batch, as the rewritten one does).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// auto (a rewritten model that passes its quality gate and is faster here), on (one that passes the gate), off, or a variant to pin (fused-u8, fused-u8-fp16, fused-u8-tf32, fused-u8-tf32-norm, fused-u8-fp16-norm-nhwc, fused-u8-fp16-norm-nhwc-s2d; still gated).
    #[arg(long)]
    pub optimize: Option<String>,
    #[arg(short, long)]
    pub config: Option<PathBuf>,
}

/// `framewise optimize-model`.
#[derive(Args, Debug)]
pub struct OptimizeArgs {
    /// Rewrites to apply, comma-separated: fuse (instance normalisation), u8 (uint8 NHWC in and out), fp16, batch (dynamic batch dimension), pixels (with u8: the first convolution reads whole pixel values, exact in fp16), norm (with fuse: normalisation + style scale and shift + ReLU + the next reflect Pad as framewise's own op; with fp16 only together with nhwc), nhwc (with norm: the ops channels last, the residual Adds and 2x upsampling folded in, the other reflect Pads as framewise's ReflectPad; for NHWC convolutions on a GPU), s2d (with nhwc: the 9x9 convolutions on 3 and 4 channels as 5x5 ones on 2x2 blocks of pixels, written and read by framewise's ops), nv12 (with u8: the image input also takes NV12, converted on the model's device by framewise's PixelsIn).
    #[arg(long, default_value = "fuse,u8,batch")]
    pub rewrites: String,
    /// Where to write the rewritten model.
    #[arg(short, long)]
    pub output: PathBuf,
    #[arg(short, long)]
    pub config: Option<PathBuf>,
}
