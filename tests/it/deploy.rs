//! The files in `deploy/` stay true to the daemon: the production config is
//! valid for `sandpitd --check` (with the repository's profiles), and the
//! systemd unit agrees with it on the data directory, the config path and
//! the stop timeout.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sandpit::config::Config;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `Key=value` settings of a unit file, in order (keys may repeat).
fn unit_settings(text: &str) -> Vec<(&str, &str)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect()
}

#[test]
fn production_config_passes_the_daemons_check() {
    let config = repo("deploy/sandpit.production.toml");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandpitd"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SANDPIT__")) {
        cmd.env_remove(k);
    }
    let out = cmd
        .arg("--config")
        .arg(&config)
        .arg("--check")
        .env("SANDPIT__PROFILES_DIR", repo("sandbox-profiles"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sandpitd --check: {stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("profiles are valid"));

    // Each role is represented, by certificate and by token.
    let cfg = Config::load_from(Some(&config), [("SANDPIT__PROFILES_DIR".to_string(), "sandbox-profiles".to_string())])
        .unwrap();
    for role in ["requester", "operator", "approver", "auditor"] {
        assert!(cfg.identities.iter().any(|i| i.roles.iter().any(|r| r.as_str() == role)), "no {role}");
    }
    assert!(cfg.identities.iter().any(|i| i.cert_subject.is_some()));
    assert!(cfg.identities.iter().any(|i| i.token_sha256.is_some()));
    assert!(cfg.tls.as_ref().is_some_and(|t| t.client_ca.is_some()), "mutual TLS");
}

#[test]
fn systemd_unit_agrees_with_the_production_config() {
    let cfg = Config::load_from(Some(&repo("deploy/sandpit.production.toml")), Vec::<(String, String)>::new()).unwrap();
    let unit = std::fs::read_to_string(repo("deploy/sandpitd.service")).unwrap();
    let settings = unit_settings(&unit);
    let get = |key: &str| settings.iter().filter(|(k, _)| *k == key).map(|(_, v)| *v).collect::<Vec<_>>();

    let state = get("StateDirectory");
    assert_eq!(state.len(), 1);
    assert_eq!(Path::new("/var/lib").join(state[0]), cfg.data_dir, "StateDirectory is data_dir");
    let start = get("ExecStart");
    assert_eq!(start, ["/usr/local/bin/sandpitd --config /etc/sandpit/sandpit.toml"]);
    for pre in get("ExecStartPre").into_iter().chain(get("ExecReload")).filter(|c| c.contains("sandpitd")) {
        assert_eq!(pre, "/usr/local/bin/sandpitd --config /etc/sandpit/sandpit.toml --check");
    }
    assert_eq!(get("ExecReload").last(), Some(&"/bin/kill -HUP $MAINPID"), "SIGHUP reloads the profiles");
    let stop: Duration = humantime::parse_duration(get("TimeoutStopSec")[0]).unwrap();
    let grace = cfg.lifecycle.shutdown_grace;
    assert!(stop > grace && stop <= grace + Duration::from_secs(30), "TimeoutStopSec {stop:?}, grace {grace:?}");
    assert_eq!(get("KillSignal"), ["SIGTERM"]);
    assert_eq!(get("Restart"), ["on-failure"]);
    assert_eq!(get("RestartPreventExitStatus"), ["64"], "a bad config is not retried");
}
