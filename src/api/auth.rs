//! Authentication for gRPC: the bearer token in `authorization` is mapped to
//! a [`Caller`] put in the request's extensions for the handlers.

use std::sync::Arc;

use tonic::{Request, Status};

use crate::auth::{Caller, Identities};

/// A tonic interceptor that authenticates every call.
#[derive(Clone)]
pub struct Authenticator {
    identities: Arc<Identities>,
}

impl Authenticator {
    pub fn new(identities: Identities) -> Self {
        Authenticator {
            identities: Arc::new(identities),
        }
    }

    pub fn intercept(&self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let token = header.and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        });
        let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
            return Err(Status::unauthenticated(
                "missing bearer token (authorization: Bearer <token>)",
            ));
        };
        let caller = self
            .identities
            .authenticate(token)
            .cloned()
            .ok_or_else(|| Status::unauthenticated("unknown token"))?;
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}

/// The authenticated caller of a request.
pub fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("not authenticated"))
}
