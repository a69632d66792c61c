//! Starting a coordinator: the actix system (JobManager and the actix-web
//! dashboard/API) on its own thread, tonic on a tokio runtime on another, all
//! stopped by one handle.

use crate::autoscaler::{self, Autoscaler};
use crate::grpc::Services;
use crate::manager::JobManager;
use crate::metrics::Metrics;
use crate::scheduler::Rules;
use crate::store::{Store, StoreError};
use crate::web::{self, WebState};
use actix::Actor;
use framewise_common::config::{CoordinatorConfig, StorageConfig};
use framewise_common::proto::{
    job_service_server::JobServiceServer, worker_service_server::WorkerServiceServer,
};
use framewise_common::storage as blob;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use thiserror::Error;
use tokio::sync::oneshot;
use tracing::info;

/// Why the coordinator could not start.
#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {detail}")]
    Bind { addr: String, detail: String },
    #[error("{0}")]
    Config(String),
    #[error("coordinator start: {0}")]
    Internal(String),
}

/// A running coordinator.
pub struct Coordinator {
    addr: SocketAddr,
    http: Option<(SocketAddr, actix_web::dev::ServerHandle)>,
    stop: Option<oneshot::Sender<()>>,
    system: actix::System,
    threads: Vec<JoinHandle<()>>,
    /// The blob trigger, when enabled (stops polling when dropped).
    _trigger: Option<crate::trigger::Trigger>,
    manager: actix::Addr<JobManager>,
}

impl Coordinator {
    /// The gRPC address it listens on (the real port when the config asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL workers and clients connect to.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The dashboard's URL, if the HTTP server is on.
    pub fn http_url(&self) -> Option<String> {
        self.http.as_ref().map(|(a, _)| format!("http://{a}"))
    }

    /// Workers heard from at or after `since_ms` (Unix ms): `framewise run` waits for the
    /// worker processes it started to register before it submits the job.
    pub async fn workers_seen_since(&self, since_ms: u64) -> usize {
        self.manager
            .send(crate::manager::ListWorkers)
            .await
            .map(|ws| ws.iter().filter(|w| w.last_seen_ms >= since_ms).count())
            .unwrap_or(0)
    }

    /// Blocks until the gRPC server stops.
    pub fn wait(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Stops serving, stops the actors, and waits for both threads.
    pub fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some((_, h)) = self.http.take() {
            // Resolves once the server's workers have stopped; the actor thread drives it.
            drop(h.stop(false));
        }
        self.system.stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Opens the state, starts the actors and the gRPC server.
pub fn start(cfg: &CoordinatorConfig, storage: &StorageConfig) -> Result<Coordinator, StartError> {
    let blobs = blob::Store::from_config(storage).map_err(|e| StartError::Config(e.to_string()))?;
    let work_url = storage_root(&blobs, "coordinator.work_url", &cfg.work_url, &cfg.work_dir)?;
    let logs_url = storage_root(&blobs, "coordinator.logs_url", &cfg.logs_url, &cfg.logs_dir)?;
    let trigger_cfg = trigger_config(&blobs, &cfg.trigger)?;
    prepare_containers(&blobs, &[&work_url, &logs_url, &trigger_cfg.output_prefix])?;
    let trigger_status = crate::trigger::Trigger::new_status(&trigger_cfg);
    let store = Store::open(&cfg.data_dir)?;
    let rules = Rules {
        lease_ttl_ms: cfg.lease_ttl_ms,
        heartbeat_interval_ms: cfg.heartbeat_interval_ms,
        max_attempts: cfg.max_attempts,
        segment_seconds: cfg.segment_seconds,
        chunk_seconds: cfg.chunk_seconds,
        speculation_factor: cfg.speculation_factor,
        work_url,
        logs_url: logs_url.clone(),
        limits: cfg.limits.clone(),
    };
    let token = viewer_token(cfg)?;
    let tokens = if cfg.tokens_file.as_os_str().is_empty() {
        crate::auth::Tokens::open()
    } else {
        crate::auth::Tokens::load(&cfg.tokens_file)
            .map_err(|e| StartError::Config(e.to_string()))?
    };
    let tls = crate::tls::load(cfg).map_err(StartError::Config)?;
    let (http_tls, grpc_tls, mutual) = match tls {
        Some(t) => (Some(t.http), Some(t.grpc), t.mutual),
        None => (None, None, false),
    };
    let (http_for_actors, http_addr) = bind_http(cfg, token.is_some() || tokens.enabled())?.unzip();
    let web_tokens = tokens.clone();
    // Bound before the actors start: the autoscaler passes the real address to its workers.
    let listener = std::net::TcpListener::bind(&cfg.grpc_addr).map_err(|e| StartError::Bind {
        addr: cfg.grpc_addr.clone(),
        detail: e.to_string(),
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| StartError::Internal(e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Internal(e.to_string()))?;
    let scale_backend = scale_backend(cfg, addr)?;
    let metrics = Metrics::new();
    let (overview_tx, _) = tokio::sync::watch::channel::<std::sync::Arc<str>>("".into());
    let overview_tx = std::sync::Arc::new(overview_tx);
    let janitor = crate::janitor::Janitor::spawn(blobs.clone())
        .map_err(|e| StartError::Internal(format!("janitor thread: {e}")))?;
    // Submits make sure of these containers if the start could not reach storage.
    let work_containers = vec![rules.work_url.clone(), rules.logs_url.clone()];
    let manager = JobManager::new(store, rules, metrics.clone(), overview_tx.clone(), janitor)?;

    type Started = Result<
        (
            actix::Addr<JobManager>,
            actix::System,
            Option<actix_web::dev::ServerHandle>,
        ),
        String,
    >;
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<Started>();
    let web_metrics = metrics.clone();
    let web_blobs = blobs.clone();
    let web_trigger = trigger_status.clone();
    let scale_config = cfg.autoscaler.clone();
    let actors = std::thread::Builder::new()
        .name("fw-actors".into())
        .spawn(move || {
            let sys = actix::System::new();
            // The autoscaler's address lives as long as the system (the dashboard may hold none).
            let mut scaler_addr = None;
            // The autoscaler runs on its own arbiter (thread): a backend call that blocks (ARM
            // over HTTPS) never holds up the JobManager's lease handling.
            let scaler_arbiter = actix::Arbiter::new();
            let started = sys.block_on(async {
                let addr = manager.start();
                let scaler = scale_backend.map(|b| {
                    let (cfg, manager, metrics) =
                        (scale_config.clone(), addr.clone(), web_metrics.clone());
                    Autoscaler::start_in_arbiter(&scaler_arbiter.handle(), move |_| {
                        Autoscaler::new(cfg, b, manager, metrics)
                    })
                });
                let handle = match http_for_actors {
                    Some(l) => {
                        let state = WebState {
                            manager: addr.clone(),
                            metrics: web_metrics,
                            overview: overview_tx,
                            token,
                            logs_url,
                            blobs: web_blobs,
                            autoscaler: scaler.clone(),
                            autoscaler_config: scale_config,
                            trigger: web_trigger,
                            tokens: web_tokens,
                        };
                        let srv = web::serve(l, state, http_tls).map_err(|e| e.to_string())?;
                        let h = srv.handle();
                        actix::spawn(srv);
                        Some(h)
                    }
                    None => None,
                };
                scaler_addr = scaler;
                Ok((addr, actix::System::current(), handle))
            });
            let ok = started.is_ok();
            let _ = addr_tx.send(started);
            if ok {
                let _ = sys.run();
            }
            drop(scaler_addr);
            scaler_arbiter.stop();
            let _ = scaler_arbiter.join();
        })
        .map_err(|e| StartError::Internal(e.to_string()))?;
    let (manager_addr, system, http_handle) = addr_rx
        .recv()
        .map_err(|_| StartError::Internal("actor system did not start".into()))?
        .map_err(|e| StartError::Internal(format!("HTTP server: {e}")))?;
    let http = http_addr.zip(http_handle);
    let trigger = if trigger_cfg.enabled {
        let sub = crate::trigger::Submitter {
            manager: manager_addr.clone(),
            blobs: blobs.clone(),
            max_input_bytes: cfg.limits.max_input_bytes,
        };
        Some(
            crate::trigger::Trigger::spawn(trigger_cfg, sub, trigger_status)
                .map_err(|e| StartError::Internal(format!("trigger thread: {e}")))?,
        )
    } else {
        None
    };
    let manager = manager_addr.clone();
    let services = Services {
        manager: manager_addr,
        metrics,
        max_input_bytes: cfg.limits.max_input_bytes,
        lease_ttl_ms: cfg.lease_ttl_ms,
        heartbeat_interval_ms: cfg.heartbeat_interval_ms,
        blobs,
        tokens: tokens.clone(),
        work_containers,
        submit_rate: std::sync::Arc::new(crate::ratelimit::RateLimiter::new(
            cfg.limits.submits_per_minute,
        )),
        // Signed URLs outlive a lease by a few TTLs (a lease is renewed by heartbeats).
        sas_valid: std::time::Duration::from_millis(
            (cfg.lease_ttl_ms * 4).max(storage.sas_valid_s * 1000),
        ),
    };
    // Requests larger than a probe result of `limits.max_frames` frames are refused.
    let request_limit = framewise_common::request_limit_bytes(cfg.limits.max_frames);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    // HTTP/2 framing and protobuf for every worker's connection: one thread per core (two on
    // 16 cores queued calls behind each other: LeaseTask p99 44 ms at 17,000 operations/s).
    let grpc_threads = match cfg.grpc_threads {
        0 => std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 16),
        n => n,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(grpc_threads)
        .thread_name("fw-grpc")
        .enable_all()
        .build()
        .map_err(|e| StartError::Internal(e.to_string()))?;
    let grpc = std::thread::Builder::new()
        .name("fw-grpc-main".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot use the gRPC listener");
                        return;
                    }
                };
                // No Nagle: a reply written in more than one segment otherwise waits for the
                // client's delayed ACK (measured: LeaseTask p50 43 ms on an idle coordinator).
                let incoming = tonic::transport::server::TcpIncoming::from(listener)
                    .with_nodelay(Some(true));
                let mut builder = tonic::transport::Server::builder();
                if let Some(t) = grpc_tls {
                    builder = match builder.tls_config(t) {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot use the TLS settings");
                            return;
                        }
                    };
                }
                let r = builder
                    .add_service(
                        JobServiceServer::new(services.clone())
                            .max_decoding_message_size(request_limit)
                            .max_encoding_message_size(framewise_common::CLIENT_MAX_MESSAGE_BYTES),
                    )
                    // Every WorkerService call needs a worker (or admin) token when auth is on.
                    .add_service(tonic::service::interceptor::InterceptedService::new(
                        WorkerServiceServer::new(services)
                            .max_decoding_message_size(request_limit)
                            .max_encoding_message_size(framewise_common::CLIENT_MAX_MESSAGE_BYTES),
                        move |req: tonic::Request<()>| {
                            if mutual && !crate::tls::has_client_cert(&req) {
                                return Err(tonic::Status::permission_denied(
                                    "workers must present a client certificate signed by coordinator.tls_client_ca_file (worker.tls_cert_file, tls_key_file)",
                                ));
                            }
                            crate::auth::require(
                                &tokens,
                                &req,
                                &[crate::auth::Role::Worker, crate::auth::Role::Admin],
                            )?;
                            Ok(req)
                        },
                    ))
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stop_rx.await;
                    })
                    .await;
                if let Err(e) = r {
                    tracing::error!(error = %e, "gRPC server stopped with an error");
                }
            });
        })
        .map_err(|e| StartError::Internal(e.to_string()))?;
    info!(%addr, "coordinator listening");
    if let Some((a, _)) = &http {
        info!(dashboard = %format!("http://{a}"), "dashboard and API listening");
    }
    Ok(Coordinator {
        addr,
        http,
        stop: Some(stop_tx),
        system,
        threads: vec![grpc, actors],
        _trigger: trigger,
        manager,
    })
}

/// The trigger's prefixes in canonical form, checked now (a typo fails the start, naming the key).
fn trigger_config(
    blobs: &blob::Store,
    t: &framewise_common::config::TriggerConfig,
) -> Result<framewise_common::config::TriggerConfig, StartError> {
    let mut t = t.clone();
    if !t.enabled {
        return Ok(t);
    }
    for (key, v) in [
        ("coordinator.trigger.input_prefix", &mut t.input_prefix),
        ("coordinator.trigger.output_prefix", &mut t.output_prefix),
    ] {
        let loc = blobs
            .locate_prefix(v)
            .map_err(|e| StartError::Config(format!("{key}: {e}")))?;
        let keep_slash = v.ends_with('/');
        *v = loc.url();
        if keep_slash && !v.ends_with('/') {
            v.push('/');
        }
        blobs
            .check_signable(&loc)
            .map_err(|e| StartError::Config(format!("{key}: {e}")))?;
    }
    Ok(t)
}

/// Creates the blob containers framewise writes to, if missing. A refusal (wrong key) fails the
/// start; an unreachable service only warns, once (submits make sure of them later).
fn prepare_containers(blobs: &blob::Store, urls: &[&str]) -> Result<(), StartError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError::Internal(e.to_string()))?;
    for url in urls.iter().filter(|u| !u.is_empty()) {
        if !blobs.locate_prefix(url).is_ok_and(|l| l.is_remote()) {
            continue;
        }
        match rt.block_on(blobs.ensure_container(url)) {
            Ok(()) => {}
            Err(e) if e.is_permanent() => return Err(StartError::Config(e.to_string())),
            Err(e) => {
                // One wait for an unreachable service is enough; submits create what is missing.
                tracing::warn!(%url, error = %e, "cannot reach storage yet; carrying on");
                break;
            }
        }
    }
    Ok(())
}

/// The canonical URL of a work or logs location: `url` if set, else the local directory. A blob
/// location must have credentials that can sign workers' URLs, checked now rather than at the
/// first lease.
fn storage_root(
    blobs: &blob::Store,
    key: &str,
    url: &str,
    dir: &std::path::Path,
) -> Result<String, StartError> {
    if url.is_empty() {
        return Ok(blob::file_url(dir));
    }
    let loc = blobs
        .locate_prefix(url)
        .map_err(|e| StartError::Config(format!("{key}: {e}")))?;
    blobs
        .check_signable(&loc)
        .map_err(|e| StartError::Config(format!("{key}: {e}")))?;
    Ok(loc.url().trim_end_matches('/').to_string())
}

/// The autoscaler's backend, if it is enabled: checks the worker config and the binary now, so
/// a mistake fails the start naming the key instead of failing every worker later.
fn scale_backend(
    cfg: &CoordinatorConfig,
    grpc: SocketAddr,
) -> Result<Option<Box<dyn autoscaler::ScaleBackend + Send>>, StartError> {
    let a = &cfg.autoscaler;
    if !a.enabled {
        return Ok(None);
    }
    if a.backend == "azure-vmss" {
        info!(backend = %a.backend, scale_set = %a.azure.scale_set, resource_group = %a.azure.resource_group, "autoscaler enabled");
        return Ok(Some(Box::new(autoscaler::vmss::Vmss::new(a.azure.clone()))));
    }
    let absolute = |p: &std::path::Path| {
        if p.is_absolute() {
            Ok(p.to_path_buf())
        } else {
            std::env::current_dir()
                .map(|d| d.join(p))
                .map_err(|e| StartError::Internal(e.to_string()))
        }
    };
    let worker_config = absolute(&a.worker_config)?;
    if !worker_config.is_file() {
        return Err(StartError::Config(format!(
            "coordinator.autoscaler.worker_config: {} does not exist",
            worker_config.display()
        )));
    }
    let bin = if a.framewise_bin.as_os_str().is_empty() {
        std::env::current_exe().map_err(|e| {
            StartError::Config(format!(
                "coordinator.autoscaler.framewise_bin: cannot find this executable ({e}); set the path"
            ))
        })?
    } else {
        absolute(&a.framewise_bin)?
    };
    if !bin.is_file() {
        return Err(StartError::Config(format!(
            "coordinator.autoscaler.framewise_bin: {} does not exist",
            bin.display()
        )));
    }
    // Workers on this machine reach a wildcard address through loopback.
    let ip = match grpc.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        }
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => {
            std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        }
        ip => ip,
    };
    let scheme = if cfg.tls_cert_file.as_os_str().is_empty() {
        "http"
    } else {
        "https"
    };
    let url = format!("{scheme}://{}", SocketAddr::new(ip, grpc.port()));
    info!(backend = %a.backend, bin = %bin.display(), worker_config = %worker_config.display(), %url, "autoscaler enabled");
    Ok(Some(Box::new(autoscaler::local::Local::new(
        bin,
        worker_config,
        url,
        cfg.logs_dir.join("autoscaler"),
    ))))
}

/// The viewer token from `viewer_token` or `viewer_token_file` (never logged).
fn viewer_token(cfg: &CoordinatorConfig) -> Result<Option<std::sync::Arc<str>>, StartError> {
    if !cfg.viewer_token.is_empty() {
        return Ok(Some(cfg.viewer_token.trim().into()));
    }
    if cfg.viewer_token_file.as_os_str().is_empty() {
        return Ok(None);
    }
    let f = &cfg.viewer_token_file;
    let text = std::fs::read_to_string(f).map_err(|e| {
        StartError::Config(format!(
            "coordinator.viewer_token_file: cannot read {}: {e}",
            f.display()
        ))
    })?;
    let t = text.trim();
    if t.is_empty() {
        return Err(StartError::Config(format!(
            "coordinator.viewer_token_file: {} is empty",
            f.display()
        )));
    }
    Ok(Some(t.into()))
}

/// Binds the dashboard's listener; refuses a non-loopback address without a viewer token.
fn bind_http(
    cfg: &CoordinatorConfig,
    has_token: bool,
) -> Result<Option<(std::net::TcpListener, SocketAddr)>, StartError> {
    if cfg.http_addr.is_empty() {
        return Ok(None);
    }
    let listener = std::net::TcpListener::bind(&cfg.http_addr).map_err(|e| StartError::Bind {
        addr: cfg.http_addr.clone(),
        detail: e.to_string(),
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Internal(e.to_string()))?;
    if !web::is_loopback(&addr) && !has_token {
        return Err(StartError::Config(format!(
            "coordinator.http_addr: {} is reachable from other machines; set coordinator.viewer_token \
             or coordinator.viewer_token_file (or bind to 127.0.0.1)",
            cfg.http_addr
        )));
    }
    Ok(Some((listener, addr)))
}
