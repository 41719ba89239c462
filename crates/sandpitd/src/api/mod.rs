//! The gRPC layer: thin. Each handler authorizes the call ([`auth::Gate`],
//! the one role table), converts the request into domain types
//! ([`convert`]), calls the [`sandpit_core::lifecycle::Manager`], and maps the one
//! [`sandpit_core::Error`] type to a status ([`status`]).

pub mod audit;
pub mod auth;
pub mod limits;
pub mod profile;
pub mod register;
pub mod sandbox;
