//! `sandpitd --cleanup`: what daemon instances left on this engine and host,
//! and removing everything of one of them.
//!
//! A daemon removes its own objects and rules as sandboxes end; what is left
//! belongs to an instance whose daemon stopped for good with sandboxes live,
//! or whose data directory was lost. Nothing here can tell whether another
//! instance's daemon still runs (its data directory is elsewhere): listing
//! removes nothing, and removing is asked for by instance id. The instance
//! of the store this configuration uses is never removed: its daemon would
//! adopt those sandboxes at its next start.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::firewall::{self, Leftover, SHORT};
use crate::{DockerRuntime, InstanceObjects};
use sandpit_core::{Error, Result};

/// One instance's leftovers. `instance` is the full id when Docker's labels
/// give it, else the [`SHORT`] prefix the chain names carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    pub instance: String,
    pub objects: InstanceObjects,
    pub firewall: Leftover,
}

/// Docker's view (full ids) and the firewall's (short ids) as one list.
pub fn merge(objects: BTreeMap<String, InstanceObjects>, mut rules: BTreeMap<String, Leftover>) -> Vec<Found> {
    let mut out: Vec<Found> = objects
        .into_iter()
        .map(|(instance, objects)| {
            let firewall = rules.remove(&short(&instance)).unwrap_or_default();
            Found { instance, objects, firewall }
        })
        .collect();
    out.extend(rules.into_iter().map(|(instance, firewall)| Found { instance, firewall, ..Found::default() }));
    out.sort_by(|a, b| a.instance.cmp(&b.instance));
    out
}

fn short(instance: &str) -> String {
    instance.chars().take(SHORT).collect()
}

/// Every instance with objects on the engine or rules on the host.
pub async fn survey(rt: &DockerRuntime) -> Result<Vec<Found>> {
    Ok(merge(rt.instances().await?, firewall::leftovers().await?))
}

/// The listing: one line per instance, `own` marked.
pub fn table(found: &[Found], own: Option<&str>) -> String {
    let mut out = format!(
        "{:<18} {:>10} {:>8} {:>7} {:>6} {:>5}\n",
        "INSTANCE", "CONTAINERS", "NETWORKS", "VOLUMES", "CHAINS", "RULES"
    );
    for f in found {
        let mark = if own.is_some_and(|o| short(o) == short(&f.instance)) { "  (this config's store)" } else { "" };
        let _ = writeln!(
            out,
            "{:<18} {:>10} {:>8} {:>7} {:>6} {:>5}{mark}",
            f.instance,
            f.objects.containers,
            f.objects.networks,
            f.objects.volumes,
            f.firewall.chains,
            f.firewall.rules
        );
    }
    out
}

/// Why `target` may not be removed, if it may not: not an instance id, or
/// this configuration's own.
pub fn refusal(target: &str, own: Option<&str>) -> Option<String> {
    if target.len() < SHORT || !target.chars().all(|c| c.is_ascii_hexdigit()) {
        return Some(format!(
            "'{target}' is not an instance id (at least {SHORT} hex digits, as `sandpitd --cleanup` lists them)"
        ));
    }
    match own {
        Some(own) if short(own) == short(target) => Some(format!(
            "{target} is the instance of this configuration's own store ({own}); its daemon adopts its sandboxes \
             at start. Delete sandboxes through the API, or remove that data directory first"
        )),
        _ => None,
    }
}

/// What removing `target` found and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    /// Full ids whose Docker objects were removed.
    pub instances: Vec<String>,
    pub objects: InstanceObjects,
    pub firewall: Leftover,
}

/// Removes every Docker object and firewall rule of `target` (a full id or
/// its [`SHORT`] prefix), after [`refusal`] said nothing.
pub async fn remove(rt: &DockerRuntime, target: &str) -> Result<Removed> {
    let ids: Vec<String> = rt.instances().await?.into_keys().filter(|i| i.starts_with(target)).collect();
    if ids.len() > 1 {
        return Err(Error::invalid("instance", format!("'{target}' names several instances: {}", ids.join(", "))));
    }
    let mut removed = Removed::default();
    for id in &ids {
        let o = rt.remove_instance(id).await?;
        removed.objects.containers += o.containers;
        removed.objects.networks += o.networks;
        removed.objects.volumes += o.volumes;
    }
    removed.instances = ids;
    removed.firewall = firewall::remove_instance(target).await?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_and_firewall_views_merge_by_short_id() {
        let objects = BTreeMap::from([
            ("0123456789abcdef".to_string(), InstanceObjects { containers: 2, networks: 2, volumes: 0 }),
            ("aaaaaaaaaaaa0000".to_string(), InstanceObjects { containers: 1, networks: 0, volumes: 1 }),
        ]);
        let rules = BTreeMap::from([
            ("0123456789ab".to_string(), Leftover { chains: 3, rules: 30 }),
            ("feedfacecafe".to_string(), Leftover { chains: 2, rules: 4 }),
        ]);
        let found = merge(objects, rules);
        let ids: Vec<&str> = found.iter().map(|f| f.instance.as_str()).collect();
        assert_eq!(ids, ["0123456789abcdef", "aaaaaaaaaaaa0000", "feedfacecafe"]);
        assert_eq!(found[0].firewall, Leftover { chains: 3, rules: 30 });
        assert_eq!(found[1].firewall, Leftover::default());
        assert_eq!(found[2].objects, InstanceObjects::default());

        let t = table(&found, Some("feedfacecafe1234"));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("INSTANCE"));
        assert!(lines[1].starts_with("0123456789abcdef") && !lines[1].contains("this config"));
        assert!(lines[3].starts_with("feedfacecafe") && lines[3].ends_with("(this config's store)"), "{t}");
    }

    #[test]
    fn only_other_instances_ids_may_be_removed() {
        let own = Some("0123456789abcdef");
        assert_eq!(refusal("feedfacecafe", own), None);
        assert_eq!(refusal("feedfacecafe0000", own), None);
        assert_eq!(refusal("feedfacecafe", None), None);
        for bad in ["", "feed", "feedfacecafX", "../../etc", "feedface cafe"] {
            assert!(refusal(bad, own).unwrap().contains("not an instance id"), "{bad}");
        }
        for mine in ["0123456789ab", "0123456789abcdef", "0123456789abffff"] {
            assert!(refusal(mine, own).unwrap().contains("own store"), "{mine}");
        }
    }
}
