//! TLS for the coordinator's two listeners (rustls with ring): gRPC (tonic) and HTTP
//! (actix-web) share the certificate and key from `coordinator.tls_cert_file` /
//! `tls_key_file`. With `tls_client_ca_file`, WorkerService calls must also present a client
//! certificate that CA signed (mutual TLS); users' calls and the dashboard need none.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// The coordinator's TLS settings, loaded and checked at start.
pub struct ServerTls {
    pub grpc: tonic::transport::ServerTlsConfig,
    pub http: rustls::ServerConfig,
    /// Whether workers must present a client certificate.
    pub mutual: bool,
}

fn read(key: &str, p: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("coordinator.{key}: {}: {e}", p.display()))
}

/// `None` when TLS is off (no certificate configured).
pub fn load(
    cfg: &framewise_common::config::CoordinatorConfig,
) -> Result<Option<ServerTls>, String> {
    if cfg.tls_cert_file.as_os_str().is_empty() {
        return Ok(None);
    }
    let cert_pem = read("tls_cert_file", &cfg.tls_cert_file)?;
    let key_pem = read("tls_key_file", &cfg.tls_key_file)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            format!(
                "coordinator.tls_cert_file: {}: {e}",
                cfg.tls_cert_file.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "coordinator.tls_cert_file: {}: no certificate in it",
            cfg.tls_cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "coordinator.tls_key_file: {}: {e}",
            cfg.tls_key_file.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let http = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!("coordinator.tls_cert_file / tls_key_file: they do not go together: {e}")
        })?;
    let mut grpc = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(&cert_pem, &key_pem));
    let mutual = !cfg.tls_client_ca_file.as_os_str().is_empty();
    if mutual {
        let ca = read("tls_client_ca_file", &cfg.tls_client_ca_file)?;
        grpc = grpc
            .client_ca_root(tonic::transport::Certificate::from_pem(ca))
            // Users' tools connect without a certificate; the WorkerService checks for one.
            .client_auth_optional(true);
    }
    Ok(Some(ServerTls { grpc, http, mutual }))
}

/// Whether a gRPC request came with a verified client certificate.
pub fn has_client_cert<T>(req: &tonic::Request<T>) -> bool {
    req.peer_certs().is_some_and(|c| !c.is_empty())
}
