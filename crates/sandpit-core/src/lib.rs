//! Sandpit's core: what a sandbox is, what policy allows, how sandboxes live
//! and end, and what is on record. It knows no gRPC, Docker or SQLite: the
//! container engine and the store are traits other crates implement.
//!
//! - [`policy`]: classifications, profiles and admission; pure.
//! - [`sandbox`], [`register`]: the sandbox record and the experiment register.
//! - [`runtime`]: the sandbox-level [`runtime::Runtime`] interface and what a
//!   runtime can do ([`runtime::Capabilities`]); [`runtime::fake`] for tests.
//! - [`store`]: the async, versioned [`store::Store`] interface;
//!   [`store::memory`] keeps it in memory for tests.
//! - [`lifecycle`]: the manager that provisions, extends, tears down,
//!   expires and reconciles sandboxes, written against those two traits.
//! - [`audit`]: the hash-chained audit log, signed checkpoints and the
//!   bounds on refusals.
//! - [`auth`]: who a caller is and what its roles let it see and do.
//! - [`egress`]: what the egress proxy asks of the daemon, and host parsing.
//! - [`metrics`]: the process's Prometheus registry.
#![forbid(unsafe_code)]

pub mod audit;
pub mod auth;
pub mod data_dir;
pub mod egress;
pub mod error;
pub mod lifecycle;
pub mod metrics;
pub mod policy;
pub mod register;
pub mod runtime;
pub mod sandbox;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod text;
pub mod time;

pub use error::{Error, Result};
