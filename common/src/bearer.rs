//! The client side of the coordinator's tokens: every call carries
//! `authorization: Bearer TOKEN` (nothing when no token is configured).

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
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

/// Connects to `url` with `bearer` on every call.
pub async fn connect(url: &str, bearer: Bearer) -> Result<AuthChannel, String> {
    let ch = Channel::from_shared(url.to_string())
        .map_err(|e| format!("{url}: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    Ok(InterceptedService::new(ch, bearer))
}
