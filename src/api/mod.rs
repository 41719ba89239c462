//! The gRPC layer: thin. Each handler authenticates (the interceptor did),
//! converts the request into domain types ([`convert`]), calls the
//! [`crate::lifecycle::Manager`], and maps the one [`crate::Error`] type to a
//! status ([`status`]).

pub mod auth;
pub mod convert;
pub mod sandbox;
pub mod status;
