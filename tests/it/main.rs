//! Integration tests: the real `sandpitd` binary against the real Docker
//! engine, over real gRPC. One binary (this folder) to keep link time down.
//!
//! Every Docker object a test makes carries `sandpit.test-run=<unique id>`
//! and is removed when its [`support::Daemon`] is dropped, pass or fail.

mod support;

mod audit;
mod cis;
mod cli;
mod dashboard;
mod datasets;
mod deploy;
mod docker_outage;
mod escape;
mod faults;
mod fleet;
mod governance;
mod gvisor;
mod lifecycle;
mod limits;
mod network;
mod observability;
mod oversight;
mod pools;
mod profiles;
mod reconcile;
mod register;
mod requests;
mod swarm;
mod tls;
mod transfer;
mod work;
