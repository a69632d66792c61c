//! The client side of the coordinator's tokens: every call carries
//! `authorization: Bearer TOKEN` (nothing when no token is configured).

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Request, Status};

/// Adds the caller's token to each request.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

/// A channel whose calls carry the token.
pub type AuthChannel = InterceptedService<Channel, Bearer>;

impl Bearer {
    /// A token as given (trimmed); `None` or "" = send none.
    pub fn new(token: Option<&str>) -> Result<Bearer, String> {
        match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => Ok(Bearer(None)),
            Some(t) => format!("Bearer {t}")
                .parse()
                .map(|v| Bearer(Some(v)))
                .map_err(|_| "the token has characters a header cannot carry".to_string()),
        }
    }

    /// The token in `inline`, else the contents of `file` (the preferred form).
    pub fn from_config(inline: &str, file: &std::path::Path) -> Result<Bearer, String> {
        if !inline.trim().is_empty() || file.as_os_str().is_empty() {
            return Bearer::new(Some(inline));
        }
        let t = std::fs::read_to_string(file)
            .map_err(|e| format!("token file {}: {e}", file.display()))?;
        Bearer::new(Some(&t))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// How a client reaches an https:// coordinator: whom it trusts and who it is.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    /// The CA that signed the coordinator's certificate; `None` = the system roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// This client's certificate chain and key (mutual TLS, for workers).
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl ClientTls {
    /// From a worker's config (`tls_ca_file`, `tls_cert_file`, `tls_key_file`).
    pub fn from_worker(c: &crate::config::WorkerConfig) -> ClientTls {
        let some = |p: &std::path::PathBuf| (!p.as_os_str().is_empty()).then(|| p.clone());
        ClientTls {
            ca_file: some(&c.tls_ca_file),
            identity: some(&c.tls_cert_file).zip(some(&c.tls_key_file)),
        }
    }

    fn config(&self) -> Result<ClientTlsConfig, String> {
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut c = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &self.ca_file {
            c = c.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(c)
    }
}

/// Connects to `url` with `bearer` on every call (plain HTTP/2 for http://).
pub async fn connect(url: &str, bearer: Bearer) -> Result<AuthChannel, String> {
    connect_tls(url, bearer, &ClientTls::default()).await
}

/// Connects to `url`; an https:// URL is reached over TLS as `tls` says.
pub async fn connect_tls(
    url: &str,
    bearer: Bearer,
    tls: &ClientTls,
) -> Result<AuthChannel, String> {
    let mut ep = Channel::from_shared(url.to_string()).map_err(|e| format!("{url}: {e}"))?;
    if url.starts_with("https://") {
        ep = ep
            .tls_config(tls.config()?)
            .map_err(|e| format!("{url}: TLS: {}", chain(&e)))?;
    }
    let ch = ep
        .connect()
        .await
        .map_err(|e| format!("{url}: {}", chain(&e)))?;
    Ok(InterceptedService::new(ch, bearer))
}

/// An error with its causes (tonic's alone says only "transport error").
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}
