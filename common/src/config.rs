//! Configuration: built-in defaults, layered with a TOML file and then with
//! `FRAMEWISE_<SECTION>__<KEY>` environment variables (figment), so every key
//! can be set per machine without editing files.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A configuration that cannot be used, naming the file and key.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("config {file}: {source}")]
    Invalid {
        file: String,
        source: Box<figment::Error>,
    },
    #[error("config {file}: {key}: {why}")]
    Value {
        file: String,
        key: &'static str,
        why: String,
    },
}

/// Everything one process may need; each file fills the sections its role uses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub coordinator: CoordinatorConfig,
    pub worker: WorkerConfig,
    pub embedded: EmbeddedConfig,
    pub storage: StorageConfig,
}

/// Azure Blob accounts (for `az://` URLs) and how workers move bytes to and from blobs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Credentials per storage account name (the coordinator's; workers need none).
    pub accounts: BTreeMap<String, AccountConfig>,
    /// How long the URLs signed for a lease stay valid, in seconds (at least 4 lease TTLs).
    pub sas_valid_s: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            accounts: BTreeMap::new(),
            sas_valid_s: 900,
        }
    }
}

/// One storage account's credential: a connection string (Azurite's includes its endpoint),
/// an account key, or a SAS token (which cannot sign workers' URLs). Prefer the `_file` keys.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountConfig {
    pub connection_string: String,
    pub connection_string_file: PathBuf,
    pub account_key: String,
    pub account_key_file: PathBuf,
    pub sas_token: String,
    pub sas_token_file: PathBuf,
    /// Blob endpoint; "" = the connection string's, else https://NAME.blob.core.windows.net.
    pub blob_endpoint: String,
}

/// The coordinator: where it listens, where it keeps state, how leases behave.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// gRPC listen address (JobService + WorkerService).
    pub grpc_addr: String,
    /// Directory of the sled database holding jobs, tasks and leases.
    pub data_dir: PathBuf,
    /// Where Segment outputs go (one file per attempt), as an absolute path.
    pub work_dir: PathBuf,
    /// Where workers write each task attempt's log (served by the dashboard; kept after the job).
    pub logs_dir: PathBuf,
    /// A lease not renewed by a heartbeat within this time expires and its task is requeued.
    pub lease_ttl_ms: u64,
    /// How often workers send heartbeats.
    pub heartbeat_interval_ms: u64,
    /// Threads serving gRPC (HTTP/2 framing, protobuf) for every worker's connection;
    /// 0 = one per core.
    pub grpc_threads: usize,
    /// A task failing on this many attempts fails its job with the collected errors.
    pub max_attempts: u32,
    /// Default length of a Segment task in seconds of video.
    pub segment_seconds: f64,
    /// Length of a chunk checkpoint in seconds of video: a lost lease redoes at most one chunk.
    pub chunk_seconds: f64,
    /// Tail speculation: a segment lease running this many times longer than the job's typical
    /// per-frame time is raced by an idle worker, first commit wins (0 = off).
    pub speculation_factor: f64,
    /// Dashboard, REST API and /metrics listen address; empty = no HTTP server.
    pub http_addr: String,
    /// Token viewers must present (Bearer header or `?token=`); required when `http_addr` is not loopback.
    pub viewer_token: String,
    /// File holding the viewer token (read at start, so the token stays out of config files).
    pub viewer_token_file: PathBuf,
    /// TLS for gRPC and HTTP: the server certificate chain and key (PEM); both or neither.
    pub tls_cert_file: PathBuf,
    pub tls_key_file: PathBuf,
    /// Mutual TLS for workers: WorkerService calls must present a certificate signed by this CA.
    pub tls_client_ca_file: PathBuf,
    /// Bearer tokens with roles (`[[tokens]]` name, role = submitter|viewer|worker|admin, token);
    /// "" = no authentication (loopback use). Every gRPC call then needs a token.
    pub tokens_file: PathBuf,
    /// What the coordinator accepts: queue size and input media bounds.
    pub limits: Limits,
    /// Starts and stops workers to follow the queue (off by default).
    pub autoscaler: AutoscalerConfig,
    /// Where Segment outputs go when not `work_dir`: a URL such as az://ACCOUNT/CONTAINER/work
    /// (needed when workers run on other machines).
    pub work_url: String,
    /// Where task logs go when not `logs_dir`: a URL, e.g. in a separate storage account that
    /// users cannot reach.
    pub logs_url: String,
    /// Submits a job for every new video under an input prefix.
    pub trigger: TriggerConfig,
}

/// The blob trigger: drop a video under `input_prefix`, find it stylized under `output_prefix`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TriggerConfig {
    pub enabled: bool,
    /// URL prefix watched for new videos, e.g. az://ACCOUNT/incoming/ (or a local directory).
    pub input_prefix: String,
    /// Where each output goes: the input's name under this prefix.
    pub output_prefix: String,
    /// How often the input prefix is listed.
    pub poll_ms: u64,
    /// Only names ending in one of these are submitted; others are recorded as rejected.
    pub extensions: Vec<String>,
    /// Style weights for triggered jobs (empty = the model's first style).
    pub style_weights: Vec<f32>,
}

impl Default for TriggerConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            input_prefix: String::new(),
            output_prefix: String::new(),
            poll_ms: 5_000,
            extensions: ["mp4", "mov", "m4v", "mkv", "webm", "avi", "ts"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            style_weights: Vec::new(),
        }
    }
}

/// The autoscaler: how many workers the queue needs, and how they are started and stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoscalerConfig {
    /// Off by default: the coordinator then only uses the workers that come to it.
    pub enabled: bool,
    /// Where workers are started: "local" (`framewise worker` processes on this machine).
    pub backend: String,
    /// Workers kept even when nothing is queued.
    pub min_workers: u32,
    /// Most workers started at once.
    pub max_workers: u32,
    /// The queue should be done in about this many seconds: desired workers =
    /// ceil(frames left / (frames/s per worker x target_seconds)), within min and max.
    pub target_seconds: f64,
    /// A worker is stopped only after this long without need for it (and never while it holds a lease).
    pub idle_cooldown_ms: u64,
    /// How often the autoscaler looks at the queue.
    pub interval_ms: u64,
    /// The worker config file the started workers load (`framewise worker -c FILE`).
    pub worker_config: PathBuf,
    /// The framewise binary that runs the workers; "" = the coordinator's own executable.
    pub framewise_bin: PathBuf,
    /// Frames/s one worker does, used until a worker has measured its real rate.
    pub per_worker_fps_estimate: f64,
    /// The scale set the `azure-vmss` backend drives.
    pub azure: AzureScaleSetConfig,
}

/// An Azure VM scale set of framewise workers (deploy/azure/azuredeploy.json makes one).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AzureScaleSetConfig {
    /// Azure Resource Manager's endpoint.
    pub arm_endpoint: String,
    pub subscription_id: String,
    pub resource_group: String,
    /// The scale set's name; its instances' VM names (`<name>_<id>`) are the workers' ids.
    pub scale_set: String,
    /// ARM API version for Microsoft.Compute/virtualMachineScaleSets.
    pub api_version: String,
    /// The managed identity token endpoint (used unless AZURE_TENANT_ID, AZURE_CLIENT_ID and
    /// AZURE_CLIENT_SECRET name a service principal).
    pub imds_token_url: String,
    /// Microsoft Entra ID's endpoint for service principal tokens.
    pub authority: String,
}

impl Default for AzureScaleSetConfig {
    fn default() -> Self {
        Self {
            arm_endpoint: "https://management.azure.com".into(),
            subscription_id: String::new(),
            resource_group: String::new(),
            scale_set: String::new(),
            api_version: "2024-07-01".into(),
            imds_token_url: "http://169.254.169.254/metadata/identity/oauth2/token".into(),
            authority: "https://login.microsoftonline.com".into(),
        }
    }
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            backend: "local".into(),
            min_workers: 0,
            max_workers: 4,
            target_seconds: 60.0,
            idle_cooldown_ms: 60_000,
            interval_ms: 2_000,
            worker_config: PathBuf::from("config/worker.toml"),
            framewise_bin: PathBuf::new(),
            per_worker_fps_estimate: 5.0,
            azure: AzureScaleSetConfig::default(),
        }
    }
}

/// Bounds on what is accepted, so one oversized or hostile input cannot take the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Jobs queued or running at once; more submits get ResourceExhausted.
    pub max_queued_jobs: u32,
    /// Jobs one submitter (token name) may have queued or running at once (0 = no own cap).
    pub max_queued_jobs_per_owner: u32,
    /// Submits one submitter may make a minute, as a burst refilled over the minute (0 = off).
    pub submits_per_minute: u32,
    /// Largest input file, in bytes.
    pub max_input_bytes: u64,
    /// Largest frame width and height, in pixels.
    pub max_width: u32,
    pub max_height: u32,
    /// Longest input, in seconds of video.
    pub max_duration_s: f64,
    /// Most video frames in one input.
    pub max_frames: u64,
    /// Containers accepted, by family: mp4 (also MOV, M4V), matroska (also WebM), avi, mpegts,
    /// flv, ogg, ...; empty = whatever the installed plugins read.
    pub allowed_containers: Vec<String>,
    /// Video codecs accepted: h264, h265, vp8, vp9, av1, mpeg4, mpeg2, prores, ...; empty = any
    /// with an installed decoder.
    pub allowed_video_codecs: Vec<String>,
}

/// The family name of a container, from the demuxer the probe found (for
/// `limits.allowed_containers`).
pub fn container_family(demuxer: &str) -> String {
    match demuxer {
        "qtdemux" => "mp4",
        "matroskademux" => "matroska",
        "avidemux" => "avi",
        "tsdemux" => "mpegts",
        "flvdemux" => "flv",
        "oggdemux" => "ogg",
        other => other.strip_suffix("demux").unwrap_or(other),
    }
    .to_string()
}

/// The short name of a video codec, from its caps name (for `limits.allowed_video_codecs`).
pub fn codec_name(caps: &str) -> String {
    match caps {
        "video/x-h264" => "h264",
        "video/x-h265" => "h265",
        "video/x-vp8" => "vp8",
        "video/x-vp9" => "vp9",
        "video/x-av1" => "av1",
        "video/mpeg" => "mpeg",
        "video/x-prores" => "prores",
        other => other.strip_prefix("video/x-").unwrap_or(other),
    }
    .to_string()
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_queued_jobs: 1000,
            max_queued_jobs_per_owner: 0,
            submits_per_minute: 0,
            max_input_bytes: 64 << 30,
            max_width: 7680,
            max_height: 4320,
            max_duration_s: 4.0 * 3600.0,
            max_frames: 1_000_000,
            allowed_containers: Vec::new(),
            allowed_video_codecs: Vec::new(),
        }
    }
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            grpc_addr: "127.0.0.1:50051".into(),
            data_dir: PathBuf::from("/var/lib/framewise"),
            work_dir: PathBuf::from("/var/lib/framewise/work"),
            logs_dir: PathBuf::from("/var/lib/framewise/logs"),
            lease_ttl_ms: 30_000,
            heartbeat_interval_ms: 2_000,
            grpc_threads: 0,
            max_attempts: 3,
            segment_seconds: 4.0,
            chunk_seconds: 1.0,
            speculation_factor: 2.0,
            http_addr: "127.0.0.1:8080".into(),
            viewer_token: String::new(),
            viewer_token_file: PathBuf::new(),
            tokens_file: PathBuf::new(),
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
            tls_client_ca_file: PathBuf::new(),
            limits: Limits::default(),
            autoscaler: AutoscalerConfig::default(),
            work_url: String::new(),
            logs_url: String::new(),
            trigger: TriggerConfig::default(),
        }
    }
}

/// A worker: the model it runs, the runtime library, threads and encoder settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// gRPC URL of the coordinator, e.g. http://10.0.0.4:50051.
    pub coordinator_url: String,
    /// Stable id of this worker; empty = hostname + random suffix.
    pub worker_id: String,
    /// Path of libonnxruntime.so (loaded at run time); ORT_DYLIB_PATH overrides it.
    pub onnxruntime_lib: PathBuf,
    /// ONNX Runtime intra-op threads per worker; 0 = cores / local workers.
    pub intra_threads: usize,
    /// Eviction notices in Azure Scheduled Events format; empty = not watched. On Azure:
    /// http://169.254.169.254/metadata/scheduledevents?api-version=2020-07-01
    pub preemption_url: String,
    /// How often the eviction-notice endpoint is polled.
    pub preemption_poll_ms: u64,
    /// This VM's name as Scheduled Events lists it; empty = every notice applies.
    pub vm_name: String,
    /// Scheduler benchmarks only: no model, each frame "takes" this long and is copied unchanged (0 = off).
    pub synthetic_model_ms_per_frame: u64,
    /// Where inference runs: "auto" (CUDA when a GPU and the CUDA provider are there), "cpu",
    /// "cuda" (every GPU in `gpus`) or "cuda:N".
    pub device: String,
    /// GPUs a CUDA worker uses: "all" or a list such as "0,2".
    pub gpus: String,
    /// Inference pipelines per GPU (each its own session, decoder, encoder and lease), so the
    /// GPU always has frames in flight and x264 gets every core.
    pub pipelines_per_gpu: usize,
    /// A media lane beside the pipelines (its own lease): it probes and assembles, an assembly
    /// stitching chunks while they are committed, so the output is nearly done when the last
    /// segment ends and no model pipeline waits on the muxer.
    pub media_lane: bool,
    /// With several GPUs, each GPU's pipelines run in a child process of their own: in one
    /// process the GPUs' pipelines slowed each other's inference (BENCHMARKS.md, issue 10).
    pub process_per_gpu: bool,
    /// Where a GPU worker decodes its input: "cpu" (GStreamer's CPU decoders) or "nvdec" (the
    /// GPU's own NVDEC through nvcodec). CPU workers always decode on the CPU.
    pub decoder: String,
    /// "auto": a rewritten model that passes its quality gate and is faster here; "on": one that
    /// passes its quality gate; "off": the file as is; a variant's name: that one if it passes.
    pub optimize: String,
    /// Where rewritten models are cached by content hash; "" = `optimized/` beside the model.
    pub model_cache_dir: PathBuf,
    /// Frames per inference run when the model takes a batch (0 or 1 = one frame per run).
    pub batch_frames: usize,
    /// CUDA: TF32 for every fp32 convolution (inputs rounded to 10 mantissa bits). Off: the
    /// gated variant fused-u8-tf32 turns it on for itself; the gate's reference is always fp32.
    pub cuda_tf32: bool,
    /// CUDA: run convolutions in NHWC layout (tensor cores' native layout for fp16).
    pub cuda_prefer_nhwc: bool,
    /// CUDA: a thread waiting for the GPU sleeps instead of spinning on a core that x264 could use.
    pub cuda_blocking_sync: bool,
    /// CUDA: how cuDNN picks convolution algorithms on a session's first run at a frame size:
    /// "exhaustive" (times them all: slow first run, fastest after), "heuristic" or "default".
    pub cuda_conv_search: String,
    /// CUDA: byte-image runs replay a CUDA graph captured per frame size (one launch per
    /// frame instead of one per kernel: less CPU per frame for x264); off for a model that
    /// ONNX Runtime cannot capture (it then runs without, with a warning).
    pub cuda_graph: bool,
    /// CUDA: frame sizes ("WxH") each session runs once before the worker registers, so the
    /// convolutions' set-up for them is not paid by a job; a session keeps only the last
    /// size ready (a run at another size is slow again), so the last is the common one.
    pub cuda_warm_up_sizes: Vec<String>,
    /// The worker's token when the coordinator has `tokens_file` (role worker); prefer `token_file`.
    pub token: String,
    pub token_file: PathBuf,
    /// For an https:// coordinator: the CA that signed its certificate ("" = the system roots),
    /// and this worker's own certificate and key when the coordinator wants mutual TLS.
    pub tls_ca_file: PathBuf,
    pub tls_cert_file: PathBuf,
    pub tls_key_file: PathBuf,
    /// Blob uploads (chunks, outputs, logs): files larger than this go in blocks of this size.
    pub upload_block_bytes: u64,
    /// Blocks uploaded at once.
    pub upload_parallel: usize,
    /// Tries per storage request before a transfer fails (exponential backoff, up to 5 s apart).
    pub upload_retries: u32,
    pub model: ModelConfig,
    pub encoder: EncoderConfig,
}

/// Values of `worker.optimize`: the modes, then the rewritten variants one can pin (by name,
/// still quality-gated; worker/src/variant.rs defines them).
pub const OPTIMIZE_MODES: &[&str] = &[
    "auto",
    "on",
    "off",
    "fused-u8",
    "fused-u8-fp16",
    "fused-u8-tf32",
    "fused-u8-tf32-norm",
    "fused-u8-fp16-norm-nhwc",
    "fused-u8-fp16-norm-nhwc-s2d",
    "fused-u8-i16conv",
];

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            coordinator_url: "http://127.0.0.1:50051".into(),
            worker_id: String::new(),
            onnxruntime_lib: PathBuf::from(".deps/onnxruntime/libonnxruntime.so.1.32.0"),
            intra_threads: 0,
            preemption_url: String::new(),
            preemption_poll_ms: 1000,
            vm_name: String::new(),
            synthetic_model_ms_per_frame: 0,
            device: "auto".into(),
            gpus: "all".into(),
            pipelines_per_gpu: 8,
            media_lane: true,
            process_per_gpu: true,
            decoder: "cpu".into(),
            optimize: "auto".into(),
            model_cache_dir: PathBuf::new(),
            batch_frames: 0,
            cuda_tf32: false,
            cuda_prefer_nhwc: false,
            cuda_blocking_sync: true,
            cuda_conv_search: "exhaustive".into(),
            cuda_graph: true,
            cuda_warm_up_sizes: vec!["1280x720".into()],
            token: String::new(),
            token_file: PathBuf::new(),
            tls_ca_file: PathBuf::new(),
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
            upload_block_bytes: 4 << 20,
            upload_parallel: 4,
            upload_retries: 10,
            model: ModelConfig::default(),
            encoder: EncoderConfig::default(),
        }
    }
}

/// Any image-to-image ONNX model with an NCHW float input can be described here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// The .onnx file.
    pub path: PathBuf,
    /// Name of the image input ([1,3,H,W] float).
    pub input: String,
    /// Name of the image output ([1,3,H,W] float).
    pub output: String,
    /// Pixel values the model expects and returns: [low, high] maps to 0..255.
    pub value_range: [f32; 2],
    /// H and W are padded (reflect) to a multiple of this and cropped back after.
    pub pad_multiple: u32,
    /// Input that receives the job's style weights; empty = the model has none.
    pub style_input: String,
    /// Number of styles the style input takes.
    pub style_count: usize,
    /// Constant float inputs fed on every run (name -> values, shape [len]).
    pub extra_inputs: BTreeMap<String, Vec<f32>>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("models/multistyle26.onnx"),
            input: "image".into(),
            output: "stylized".into(),
            value_range: [0.0, 1.0],
            pad_multiple: 4,
            style_input: "style_weights".into(),
            style_count: 26,
            extra_inputs: BTreeMap::new(),
        }
    }
}

/// H.264 output settings; all segments of a job must share them to be stitched.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncoderConfig {
    /// x264 constant quality (lower is better; 18-23 is visually good).
    pub crf: u32,
    /// x264 speed preset: ultrafast, superfast, veryfast, faster, fast, medium, ...
    pub preset: String,
    /// x264 threads per pipeline; 0 = twice the cores' even share between this process's
    /// pipelines (x264's frame threads wait on each other; an even share left cores idle).
    pub threads: u32,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            crf: 20,
            preset: "superfast".into(),
            threads: 0,
        }
    }
}

/// `framewise run`: coordinator and workers in one process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// Local workers started in the process on a CPU, sharing its cores: ONNX Runtime's
    /// intra-op threads scale poorly, so two sessions of one thread beat one of two.
    pub workers: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self { workers: 2 }
    }
}

const PRESETS: &[&str] = &[
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
];

impl Config {
    /// Defaults, then `file` (if given; it must exist), then `FRAMEWISE_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        let name = match file {
            Some(f) => {
                if !f.is_file() {
                    return Err(ConfigError::Missing(f.to_path_buf()));
                }
                fig = fig.merge(Toml::file(f));
                f.display().to_string()
            }
            None => "(defaults)".to_string(),
        };
        // FRAMEWISE_LOG is the log filter, not a config key.
        // FRAMEWISE_TOKEN is the CLI's token, not a config key.
        fig = fig.merge(
            Env::prefixed("FRAMEWISE_")
                .ignore(&["LOG", "TOKEN", "CA_FILE"])
                .split("__"),
        );
        let cfg: Config = fig.extract().map_err(|e| ConfigError::Invalid {
            file: name.clone(),
            source: Box::new(e),
        })?;
        cfg.validate(&name)?;
        Ok(cfg)
    }

    /// Checks values serde cannot: ranges and enumerations.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let err = |key, why: String| {
            Err(ConfigError::Value {
                file: file.to_string(),
                key,
                why,
            })
        };
        let c = &self.coordinator;
        if c.lease_ttl_ms < 1000 {
            return err(
                "coordinator.lease_ttl_ms",
                format!("must be at least 1000, got {}", c.lease_ttl_ms),
            );
        }
        if c.heartbeat_interval_ms == 0 || c.heartbeat_interval_ms * 2 > c.lease_ttl_ms {
            return err(
                "coordinator.heartbeat_interval_ms",
                format!(
                    "must be > 0 and at most half of lease_ttl_ms ({}), got {}",
                    c.lease_ttl_ms, c.heartbeat_interval_ms
                ),
            );
        }
        if c.max_attempts == 0 {
            return err("coordinator.max_attempts", "must be at least 1".into());
        }
        if !(c.chunk_seconds.is_finite() && c.chunk_seconds > 0.0) {
            return err(
                "coordinator.chunk_seconds",
                format!("must be > 0, got {}", c.chunk_seconds),
            );
        }
        if !(c.speculation_factor.is_finite() && c.speculation_factor >= 0.0) {
            return err(
                "coordinator.speculation_factor",
                format!("must be >= 0 (0 = off), got {}", c.speculation_factor),
            );
        }
        if !(c.segment_seconds.is_finite() && c.segment_seconds > 0.0) {
            return err(
                "coordinator.segment_seconds",
                format!("must be > 0, got {}", c.segment_seconds),
            );
        }
        let empty = |p: &PathBuf| p.as_os_str().is_empty();
        if empty(&c.tls_cert_file) != empty(&c.tls_key_file) {
            return err(
                "coordinator.tls_cert_file",
                "tls_cert_file and tls_key_file go together".into(),
            );
        }
        if !empty(&c.tls_client_ca_file) && empty(&c.tls_cert_file) {
            return err(
                "coordinator.tls_client_ca_file",
                "mutual TLS needs the server's own tls_cert_file and tls_key_file".into(),
            );
        }
        let w = &self.worker;
        if empty(&w.tls_cert_file) != empty(&w.tls_key_file) {
            return err(
                "worker.tls_cert_file",
                "tls_cert_file and tls_key_file go together".into(),
            );
        }
        let t = &c.trigger;
        if t.enabled && (t.input_prefix.is_empty() || t.output_prefix.is_empty()) {
            return err(
                "coordinator.trigger",
                "input_prefix and output_prefix must both be set when enabled".into(),
            );
        }
        if t.enabled && t.poll_ms < 100 {
            return err(
                "coordinator.trigger.poll_ms",
                format!("must be at least 100, got {}", t.poll_ms),
            );
        }
        let st = &self.worker;
        if st.upload_parallel == 0 || st.upload_parallel > 64 {
            return err(
                "worker.upload_parallel",
                format!("must be 1 to 64, got {}", st.upload_parallel),
            );
        }
        if !(64 << 10..=4000 << 20).contains(&st.upload_block_bytes) {
            return err(
                "worker.upload_block_bytes",
                format!("must be 64 KiB to 4000 MiB, got {}", st.upload_block_bytes),
            );
        }
        let a = &c.autoscaler;
        if a.backend != "local" && a.backend != "azure-vmss" {
            return err(
                "coordinator.autoscaler.backend",
                format!("{:?} is not one of local, azure-vmss", a.backend),
            );
        }
        if a.enabled && a.backend == "azure-vmss" {
            for (key, v) in [
                ("subscription_id", &a.azure.subscription_id),
                ("resource_group", &a.azure.resource_group),
                ("scale_set", &a.azure.scale_set),
            ] {
                if v.trim().is_empty() {
                    return Err(ConfigError::Value {
                        file: file.to_string(),
                        key: match key {
                            "subscription_id" => "coordinator.autoscaler.azure.subscription_id",
                            "resource_group" => "coordinator.autoscaler.azure.resource_group",
                            _ => "coordinator.autoscaler.azure.scale_set",
                        },
                        why: "must be set for backend \"azure-vmss\"".into(),
                    });
                }
            }
        }
        if a.max_workers == 0 || a.max_workers > 1000 {
            return err(
                "coordinator.autoscaler.max_workers",
                format!("must be 1 to 1000, got {}", a.max_workers),
            );
        }
        if a.min_workers > a.max_workers {
            return err(
                "coordinator.autoscaler.min_workers",
                format!(
                    "must be at most max_workers ({}), got {}",
                    a.max_workers, a.min_workers
                ),
            );
        }
        if !(a.target_seconds.is_finite() && a.target_seconds > 0.0) {
            return err(
                "coordinator.autoscaler.target_seconds",
                format!("must be > 0, got {}", a.target_seconds),
            );
        }
        if a.interval_ms < 100 {
            return err(
                "coordinator.autoscaler.interval_ms",
                format!("must be at least 100, got {}", a.interval_ms),
            );
        }
        if !(a.per_worker_fps_estimate.is_finite() && a.per_worker_fps_estimate > 0.0) {
            return err(
                "coordinator.autoscaler.per_worker_fps_estimate",
                format!("must be > 0, got {}", a.per_worker_fps_estimate),
            );
        }
        if a.enabled && a.worker_config.as_os_str().is_empty() {
            return err(
                "coordinator.autoscaler.worker_config",
                "must name the worker config file the started workers load".into(),
            );
        }
        let w = &self.worker;
        if w.preemption_poll_ms < 100 {
            return err(
                "worker.preemption_poll_ms",
                format!("must be at least 100, got {}", w.preemption_poll_ms),
            );
        }
        if let Err(why) = crate::device::parse_device(&w.device) {
            return err("worker.device", why);
        }
        if let Err(why) = crate::device::parse_gpus(&w.gpus) {
            return err("worker.gpus", why);
        }
        if w.pipelines_per_gpu == 0 || w.pipelines_per_gpu > 32 {
            return err(
                "worker.pipelines_per_gpu",
                format!("must be 1 to 32, got {}", w.pipelines_per_gpu),
            );
        }
        if w.batch_frames > 64 {
            return err(
                "worker.batch_frames",
                format!("must be 0 (auto) to 64, got {}", w.batch_frames),
            );
        }
        if !OPTIMIZE_MODES.contains(&w.optimize.as_str()) {
            return err(
                "worker.optimize",
                format!(
                    "{:?} is not one of {}",
                    w.optimize,
                    OPTIMIZE_MODES.join(", ")
                ),
            );
        }
        if !["cpu", "nvdec"].contains(&w.decoder.as_str()) {
            return err(
                "worker.decoder",
                format!("{:?} is not one of cpu, nvdec", w.decoder),
            );
        }
        if !["exhaustive", "heuristic", "default"].contains(&w.cuda_conv_search.as_str()) {
            return err(
                "worker.cuda_conv_search",
                format!(
                    "{:?} is not one of exhaustive, heuristic, default",
                    w.cuda_conv_search
                ),
            );
        }
        for size in &w.cuda_warm_up_sizes {
            if parse_size(size).is_none() {
                return err(
                    "worker.cuda_warm_up_sizes",
                    format!("{size:?} is not WxH with sides from 16 to 8192 (e.g. \"1280x720\")"),
                );
            }
        }
        if w.model.pad_multiple == 0 {
            return err("worker.model.pad_multiple", "must be at least 1".into());
        }
        if w.model.value_range[0] >= w.model.value_range[1] {
            return err(
                "worker.model.value_range",
                format!("low must be below high, got {:?}", w.model.value_range),
            );
        }
        if w.encoder.crf > 51 {
            return err(
                "worker.encoder.crf",
                format!("must be 0 to 51, got {}", w.encoder.crf),
            );
        }
        if !PRESETS.contains(&w.encoder.preset.as_str()) {
            return err(
                "worker.encoder.preset",
                format!(
                    "{:?} is not one of {}",
                    w.encoder.preset,
                    PRESETS.join(", ")
                ),
            );
        }
        if self.embedded.workers == 0 || self.embedded.workers > 64 {
            return err(
                "embedded.workers",
                format!("must be 1 to 64, got {}", self.embedded.workers),
            );
        }
        Ok(())
    }
}

/// A frame size written "WxH", each side 16 to 8192 pixels.
pub fn parse_size(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once('x')?;
    let (w, h): (u32, u32) = (w.parse().ok()?, h.parse().ok()?);
    let ok = |v: u32| (16..=8192).contains(&v);
    (ok(w) && ok(h)).then_some((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_and_codec_names_for_the_allow_lists() {
        assert_eq!(container_family("qtdemux"), "mp4");
        assert_eq!(container_family("matroskademux"), "matroska");
        assert_eq!(container_family("asfdemux"), "asf");
        assert_eq!(codec_name("video/x-h264"), "h264");
        assert_eq!(codec_name("video/x-theora"), "theora");
    }
    use std::io::Write;

    fn write(text: &str) -> (tempdir::Dir, PathBuf) {
        let d = tempdir::Dir::new();
        let p = d.0.join("c.toml");
        std::fs::File::create(&p)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        (d, p)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let p = std::env::temp_dir().join(format!("fw-cfg-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    /// The package directory at run time (cargo sets it for tests): a build reused from a
    /// clone at another path must read this checkout's files, not the path it was built at.
    fn manifest_dir() -> String {
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())
    }

    #[test]
    fn shipped_configs_load() {
        for f in ["embedded.toml", "coordinator.toml", "worker.toml"] {
            let p = std::path::PathBuf::from(manifest_dir())
                .join("../config")
                .join(f);
            Config::load(Some(&p)).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
    }

    #[test]
    fn file_values_override_defaults() {
        let (_d, p) = write("[coordinator]\nsegment_seconds = 0.5\n[worker.encoder]\ncrf = 30\n");
        let c = Config::load(Some(&p)).unwrap();
        assert_eq!(c.coordinator.segment_seconds, 0.5);
        assert_eq!(c.worker.encoder.crf, 30);
        assert_eq!(c.worker.encoder.preset, "superfast");
    }

    #[test]
    fn frame_sizes_parse_within_limits() {
        assert_eq!(parse_size("1280x720"), Some((1280, 720)));
        assert_eq!(parse_size("16x8192"), Some((16, 8192)));
        for bad in [
            "1280",
            "1280x",
            "x720",
            "8x720",
            "1280x9000",
            "1280*720",
            "-1x5",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
        let (_d, p) = write("[worker]\ncuda_warm_up_sizes = [\"1280x720\", \"big\"]\n");
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(
            e.contains("worker.cuda_warm_up_sizes") && e.contains("\"big\""),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_file_and_key() {
        let (_d, p) = write("[worker.encoder]\npreset = \"warp\"\n");
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(
            e.contains("c.toml") && e.contains("worker.encoder.preset") && e.contains("warp"),
            "{e}"
        );
        let (_d, p) = write("[worker]\ncuda_conv_search = \"fast\"\n");
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(
            e.contains("worker.cuda_conv_search")
                && e.contains("\"fast\"")
                && e.contains("heuristic"),
            "{e}"
        );
        let (_d, p) = write("[worker]\ndecoder = \"gpu\"\n");
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(
            e.contains("worker.decoder") && e.contains("\"gpu\"") && e.contains("nvdec"),
            "{e}"
        );
        let (_d, p) = write("[worker]\noptimize = \"fused-u8-int8\"\n");
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(
            e.contains("worker.optimize") && e.contains("fused-u8-tf32"),
            "{e}"
        );
        let (_d, p) = write("[coordinator]\nlease_ttl = 5\n");
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("lease_ttl"), "{e}");
        let (_d, p) = write("[coordinator]\nmax_attempts = \"three\"\n");
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("max_attempts"), "{e}");
        let (_d, p) = write("[coordinator.autoscaler]\nmin_workers = 5\nmax_workers = 3\n");
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(
            e.contains("coordinator.autoscaler.min_workers") && e.contains("max_workers (3)"),
            "{e}"
        );
        let (_d, p) = write(
            "[coordinator.autoscaler]\nenabled = true\nbackend = \"azure-vmss\"\n[coordinator.autoscaler.azure]\nsubscription_id = \"s\"\nresource_group = \"rg\"\n",
        );
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("coordinator.autoscaler.azure.scale_set"), "{e}");
        let (_d, p) = write("[coordinator.autoscaler]\nbackend = \"k8s\"\n");
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("coordinator.autoscaler.backend"), "{e}");
        let (_d, p) = write("[coordinator.autoscaler]\ntarget_secs = 5\n");
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("target_secs"), "{e}");
        let (_d, p) = write("[coordinator.autoscaler]\nper_worker_fps_estimate = 0.0\n");
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(
            e.contains("coordinator.autoscaler.per_worker_fps_estimate"),
            "{e}"
        );
        let e = Config::load(Some(Path::new("/nope/x.toml")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nope/x.toml") && e.contains("does not exist"),
            "{e}"
        );
    }
}
