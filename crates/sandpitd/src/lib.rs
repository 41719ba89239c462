//! The Sandpit daemon: the core ([`sandpit_core`]) wired to a Docker engine
//! ([`sandpit_docker`]) and a SQLite file ([`sandpit_store_sqlite`]), served
//! over gRPC ([`sandpit_proto`]).
//!
//! - [`api`]: tonic services; decode, convert, call the core, map its
//!   [`Error`](sandpit_core::Error) to a gRPC status; authorization per RPC
//!   and per-identity limits.
//! - [`identity`]: tokens and certificate subjects to callers.
//! - [`egress`]: the allowlist egress proxy for sandboxes in `allowlist` network mode.
//! - [`metrics`]: `GET /metrics`.
//! - [`dashboard`]: the read-only web dashboard for approvers, auditors and operators.
//! - [`checkpoints`]: signed checkpoints of the audit chain (key file, directory, schedule).
//! - [`config`], [`server`], [`cli`]: configuration, wiring, and the `sandpitd` command line.
#![forbid(unsafe_code)]

pub mod api;
pub mod checkpoints;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod egress;
pub mod export;
pub mod identity;
pub mod metrics;
pub mod server;

pub use cli::main;
pub use sandpit_proto as proto;
