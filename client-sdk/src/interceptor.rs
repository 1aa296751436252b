//! A tonic interceptor that authenticates outgoing calls with a fresh
//! JWT-SVID from a [`CredentialSource`].

use tokio::sync::watch;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::source::{CredentialSource, SourceState, usable};

/// Adds `authorization: Bearer <jwt>` for one audience to every request.
/// The source must keep a JWT for that audience (`jwt_audiences`).
#[derive(Debug, Clone)]
pub struct BearerInterceptor {
    state: watch::Receiver<SourceState>,
    audience: String,
}

impl BearerInterceptor {
    /// An interceptor using `source`'s JWT for `audience`.
    pub fn new(source: &CredentialSource, audience: impl Into<String>) -> Self {
        Self {
            state: source.watch(),
            audience: audience.into(),
        }
    }
}

impl Interceptor for BearerInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let creds = usable(&self.state.borrow()).map_err(|e| Status::unavailable(e.to_string()))?;
        let jwt = creds
            .jwts
            .get(&self.audience)
            .filter(|j| !j.remaining().is_zero())
            .ok_or_else(|| {
                Status::unavailable(format!("no valid JWT for audience {:?}", self.audience))
            })?;
        let value = MetadataValue::try_from(format!("Bearer {}", jwt.token))
            .map_err(|_| Status::internal("JWT is not a valid header value"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}
