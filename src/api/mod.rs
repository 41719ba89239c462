//! The gRPC layer: thin. Each handler authorizes the call ([`auth::Gate`],
//! the one role table), converts the request into domain types
//! ([`convert`]), calls the [`crate::lifecycle::Manager`], and maps the one
//! [`crate::Error`] type to a status ([`status`]).

pub mod audit;
pub mod auth;
pub mod convert;
pub mod limits;
pub mod profile;
pub mod register;
pub mod sandbox;
pub mod status;
