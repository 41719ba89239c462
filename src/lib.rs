//! Sandpit: a self-hosted sandbox daemon for AI prototyping teams.
//!
//! Layout, from the pure core outwards:
//! - [`policy`]: classifications, profiles and admission; pure, no I/O beyond reading profile files.
//! - [`store`]: the durable record of every sandbox (SQLite behind the [`store::Store`] trait).
//! - [`runtime`]: the container engine behind the [`runtime::Runtime`] trait; [`runtime::docker`] is bollard.
//! - [`lifecycle`]: the manager that provisions, extends, tears down, expires and reconciles sandboxes.
//! - [`api`]: tonic services; decode, convert, call the core, map [`Error`] to a gRPC status.
//! - [`egress`]: the allowlist egress proxy for sandboxes in `allowlist` network mode; no Docker, store or gRPC.
//! - [`checkpoints`]: signed checkpoints of the audit chain (key file, directory, schedule).
//! - [`config`], [`auth`], [`server`]: what the `sandpitd` binary wires together.
//!
//! The core never sees protobuf or bollard types.
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod auth;
pub mod checkpoints;
pub mod cleanup;
pub mod config;
pub mod egress;
pub mod error;
pub mod lifecycle;
pub mod metrics;
pub mod policy;
pub mod register;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod store;
#[cfg(test)]
pub(crate) mod testing;
pub mod text;
pub mod time;

pub use error::{Error, Result};

/// Generated protobuf and gRPC code for `sandpit.v1`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("sandpit.v1");
    include!(concat!(env!("OUT_DIR"), "/sandpit.v1.serde.rs"));

    /// Encoded descriptors of every file, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sandpit_descriptor.bin"));

    /// A proto enum whose values the CLI and the exports show by name.
    pub trait Named: TryFrom<i32> {
        /// What every value's proto name starts with.
        const PREFIX: &'static str;
        fn proto_name(&self) -> &'static str;
    }

    macro_rules! named {
        ($($t:ty => $prefix:literal),* $(,)?) => {$(
            impl Named for $t {
                const PREFIX: &'static str = $prefix;
                fn proto_name(&self) -> &'static str {
                    self.as_str_name()
                }
            }
        )*};
    }

    named! {
        SandboxState => "SANDBOX_STATE_",
        SandboxEventKind => "SANDBOX_EVENT_KIND_",
        ExperimentStatus => "EXPERIMENT_STATUS_",
        ExperimentOutcome => "EXPERIMENT_OUTCOME_",
    }

    /// How a value of a proto enum is shown: its name without the type's
    /// prefix, in lowercase (`SANDBOX_STATE_RUNNING` is `running`); empty
    /// when unspecified, `unknown` when it is no value this build knows.
    pub fn shown<E: Named>(value: i32) -> String {
        match E::try_from(value) {
            Ok(v) => {
                let name = v.proto_name().strip_prefix(E::PREFIX).unwrap_or(v.proto_name());
                if name == "UNSPECIFIED" {
                    String::new()
                } else {
                    name.to_ascii_lowercase()
                }
            }
            Err(_) => "unknown".to_string(),
        }
    }
}
