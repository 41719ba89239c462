//! Isolation levels on a Docker engine. Each level is one of the engine's
//! runtimes (runc, the engine's default, for `container`; gVisor's runsc for
//! `gvisor`), with a variant per network mode where the host needs one.
//! Which levels the engine can give is read from its runtimes (`docker info`)
//! at every connection and on each refresh: a runtime registered or removed
//! while the daemon runs is noticed, and a level whose runtime is missing is
//! refused, never run on another.

use std::collections::BTreeMap;

use sandpit_core::policy::{Isolation, NetworkMode};

const MODES: [NetworkMode; 4] = [NetworkMode::None, NetworkMode::Isolated, NetworkMode::Allowlist, NetworkMode::Open];

/// The engine runtime that gives each isolation level, per network mode. An
/// empty name is the engine's default runtime. Empty by default: the
/// daemon's config (`[isolation.runtimes]`) says which runtime gives what.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeNames(BTreeMap<Isolation, BTreeMap<NetworkMode, String>>);

impl RuntimeNames {
    /// `isolation` runs on `runtime` whatever the network mode.
    pub fn set_all(&mut self, isolation: Isolation, runtime: &str) {
        self.0.insert(isolation, MODES.iter().map(|m| (*m, runtime.to_string())).collect());
    }

    /// `isolation` runs on `runtime` in network mode `mode`.
    pub fn set(&mut self, isolation: Isolation, mode: NetworkMode, runtime: &str) {
        self.0.entry(isolation).or_default().insert(mode, runtime.to_string());
    }

    /// The runtime of a sandbox: `None` when the level has none configured
    /// for the mode, `Some("")` for the engine's default.
    pub fn get(&self, isolation: Isolation, mode: NetworkMode) -> Option<&str> {
        self.0.get(&isolation)?.get(&mode).map(String::as_str)
    }

    /// Which levels an engine that has the runtimes `engine` can give, and
    /// why not the others. A level is available only if every network
    /// mode has a runtime the engine knows: half a level would surprise.
    pub fn availability(&self, engine: &[String]) -> (Vec<Isolation>, Vec<(Isolation, String)>) {
        let mut available = Vec::new();
        let mut unavailable = Vec::new();
        for isolation in Isolation::ALL {
            let Some(by_mode) = self.0.get(&isolation) else {
                unavailable
                    .push((isolation, format!("no runtime is configured for it (isolation.runtimes.{isolation})")));
                continue;
            };
            let mut missing: Vec<String> = MODES
                .iter()
                .filter_map(|m| match by_mode.get(m) {
                    None => Some(format!("no runtime for network mode '{}'", m.as_str())),
                    Some(name) if !name.is_empty() && !engine.contains(name) => {
                        Some(format!("the Docker engine has no runtime '{name}'"))
                    }
                    Some(_) => None,
                })
                .collect();
            missing.dedup();
            if missing.is_empty() {
                available.push(isolation);
            } else {
                let hint =
                    if isolation == Isolation::Gvisor { " (scripts/register-runsc.sh registers runsc)" } else { "" };
                unavailable.push((isolation, format!("{}{hint}", missing.join("; "))));
            }
        }
        (available, unavailable)
    }

    /// Every runtime name configured for a level, for the log.
    pub fn names(&self, isolation: Isolation) -> Vec<String> {
        let mut names: Vec<String> =
            self.0.get(&isolation).map(|m| m.values().map(|n| display(n)).collect()).unwrap_or_default();
        names.sort();
        names.dedup();
        names
    }
}

fn display(name: &str) -> String {
    if name.is_empty() {
        "the engine's default".to_string()
    } else {
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// `container` on the engine's default runtime, `gvisor` on `runsc`.
    fn runc_and_runsc() -> RuntimeNames {
        let mut names = RuntimeNames::default();
        names.set_all(Isolation::Container, "");
        names.set_all(Isolation::Gvisor, "runsc");
        names
    }

    #[test]
    fn container_needs_nothing_registered_and_gvisor_needs_runsc() {
        let names = runc_and_runsc();
        let (ok, not) = names.availability(&engine(&["runc", "io.containerd.runc.v2"]));
        assert_eq!(ok, [Isolation::Container]);
        assert_eq!(not.len(), 1);
        assert_eq!(not[0].0, Isolation::Gvisor);
        assert!(not[0].1.contains("no runtime 'runsc'") && not[0].1.contains("register-runsc.sh"), "{}", not[0].1);
        let (ok, not) = names.availability(&engine(&["runc", "runsc"]));
        assert_eq!((ok, not), (vec![Isolation::Container, Isolation::Gvisor], vec![]));
        assert_eq!(names.get(Isolation::Container, NetworkMode::Open), Some(""));
        assert_eq!(names.get(Isolation::Gvisor, NetworkMode::None), Some("runsc"));
    }

    #[test]
    fn a_level_with_variants_needs_every_variant() {
        let mut names = runc_and_runsc();
        names.set(Isolation::Gvisor, NetworkMode::None, "runsc-none");
        for m in [NetworkMode::Isolated, NetworkMode::Allowlist, NetworkMode::Open] {
            names.set(Isolation::Gvisor, m, "runsc-host");
        }
        let (ok, not) = names.availability(&engine(&["runc", "runsc-none"]));
        assert_eq!(ok, [Isolation::Container]);
        assert_eq!(
            not[0].1,
            "the Docker engine has no runtime 'runsc-host' (scripts/register-runsc.sh registers runsc)"
        );
        let (ok, _) = names.availability(&engine(&["runsc-none", "runsc-host"]));
        assert_eq!(ok, Isolation::ALL);
        assert_eq!(names.get(Isolation::Gvisor, NetworkMode::Allowlist), Some("runsc-host"));
        assert_eq!(names.names(Isolation::Gvisor), ["runsc-host", "runsc-none"]);
    }

    #[test]
    fn a_level_not_configured_is_unavailable_and_has_no_runtime() {
        let mut names = RuntimeNames::default();
        names.set_all(Isolation::Container, "");
        let (ok, not) = names.availability(&engine(&["runsc"]));
        assert_eq!(ok, [Isolation::Container]);
        assert!(not[0].1.contains("isolation.runtimes.gvisor"), "{}", not[0].1);
        assert_eq!(names.get(Isolation::Gvisor, NetworkMode::None), None);
    }
}
