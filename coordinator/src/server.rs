//! Starting a coordinator: the actix system (JobManager) on its own thread,
//! tonic on a tokio runtime on another, both stopped by one handle.

use crate::grpc::Services;
use crate::manager::JobManager;
use crate::scheduler::Rules;
use crate::store::{Store, StoreError};
use actix::Actor;
use framewise_common::config::CoordinatorConfig;
use framewise_common::proto::{
    job_service_server::JobServiceServer, worker_service_server::WorkerServiceServer,
};
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
    #[error("coordinator start: {0}")]
    Internal(String),
}

/// A running coordinator.
pub struct Coordinator {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    system: actix::System,
    threads: Vec<JoinHandle<()>>,
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
        self.system.stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Opens the state, starts the actors and the gRPC server.
pub fn start(cfg: &CoordinatorConfig) -> Result<Coordinator, StartError> {
    let store = Store::open(&cfg.data_dir)?;
    let rules = Rules {
        lease_ttl_ms: cfg.lease_ttl_ms,
        max_attempts: cfg.max_attempts,
        segment_seconds: cfg.segment_seconds,
        chunk_seconds: cfg.chunk_seconds,
        work_dir: cfg.work_dir.clone(),
    };
    let manager = JobManager::new(store, rules)?;

    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let actors = std::thread::Builder::new()
        .name("fw-actors".into())
        .spawn(move || {
            let sys = actix::System::new();
            let addr = sys.block_on(async move { manager.start() });
            let _ = addr_tx.send((addr, actix::System::current()));
            let _ = sys.run();
        })
        .map_err(|e| StartError::Internal(e.to_string()))?;
    let (manager_addr, system) = addr_rx
        .recv()
        .map_err(|_| StartError::Internal("actor system did not start".into()))?;

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
    let services = Services {
        manager: manager_addr,
        lease_ttl_ms: cfg.lease_ttl_ms,
        heartbeat_interval_ms: cfg.heartbeat_interval_ms,
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                let r = tonic::transport::Server::builder()
                    .add_service(JobServiceServer::new(services.clone()))
                    .add_service(WorkerServiceServer::new(services))
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
    Ok(Coordinator {
        addr,
        stop: Some(stop_tx),
        system,
        threads: vec![grpc, actors],
    })
}
