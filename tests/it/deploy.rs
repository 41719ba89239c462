//! The files in `deploy/` stay true to the daemon: the production config is
//! valid for `sandpitd --check` (with the repository's profiles), and the
//! systemd unit agrees with it on the data directory, the config path and
//! the stop timeout. A malformed config or profile stops `sandpitd` with
//! exit code 64 (the unit's RestartPreventExitStatus) and a message naming
//! the file and the key, field or line.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sandpitd::config::Config;

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

    // Audit checkpoints: written where the unit lets the daemon write, away
    // from the data; the signing key elsewhere again, read-only to the unit.
    let logs = get("LogsDirectory");
    assert_eq!(logs.len(), 1);
    let checkpoints = cfg.checkpoint_dir();
    assert!(checkpoints.starts_with(Path::new("/var/log").join(logs[0])), "{checkpoints:?} is not writable");
    assert!(!checkpoints.starts_with(&cfg.data_dir), "checkpoints outside data_dir");
    let key = cfg.signing_key();
    assert!(!key.starts_with(&cfg.data_dir) && !key.starts_with(&checkpoints), "{key:?}");
    assert!(key.starts_with("/etc/sandpit"), "{key:?}: created with --init-audit-key, read-only to the unit");
}

#[test]
fn init_audit_key_creates_the_key_once_and_prints_the_verifier_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("etc/audit.key");
    let data = dir.path().join("data");
    let run = || {
        sandpitd(&["--init-audit-key".as_ref()], &[("SANDPIT__DATA_DIR", &data), ("SANDPIT__AUDIT__SIGNING_KEY", &key)])
    };
    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("(created)"), "{stdout}");
    let vkey = stdout.lines().last().unwrap().to_string();
    let parsed = sandpit_core::audit::checkpoint::VerifierKey::parse(&vkey).unwrap();
    assert!(parsed.name().starts_with("sandpit-"), "{vkey}");
    let pub_file = dir.path().join("etc/audit.key.pub");
    assert_eq!(std::fs::read_to_string(&pub_file).unwrap(), format!("{vkey}\n"));
    let seed = std::fs::read(&key).unwrap();

    let again = run();
    let stdout = String::from_utf8_lossy(&again.stdout).to_string();
    assert!(again.status.success() && stdout.contains("already there, kept"), "{stdout}");
    assert_eq!(stdout.lines().last(), Some(vkey.as_str()), "the same key");
    assert_eq!(std::fs::read(&key).unwrap(), seed, "never overwritten");

    // A daemon that cannot create its key (e.g. /etc read-only under the unit) says how to.
    let out = sandpitd(
        &[],
        &[
            ("SANDPIT__DATA_DIR", &data),
            ("SANDPIT__PROFILES_DIR", &repo("sandbox-profiles")),
            ("SANDPIT__LISTEN", Path::new("127.0.0.1:0")),
            ("SANDPIT__AUDIT__SIGNING_KEY", Path::new("/proc/sandpit-no-such-dir/audit.key")),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("audit.signing_key /proc/sandpit-no-such-dir/audit.key"), "{stderr}");
    assert!(stderr.contains("--init-audit-key"), "{stderr}");
}

/// `sandpitd` with only these settings: no `SANDPIT__*` from the caller's environment.
fn sandpitd(args: &[&std::ffi::OsStr], env: &[(&str, &Path)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandpitd"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SANDPIT__")) {
        cmd.env_remove(k);
    }
    cmd.args(args).envs(env.iter().map(|(k, v)| (k, v))).env("RUST_LOG", "error");
    cmd.output().unwrap()
}

#[test]
fn malformed_config_files_stop_the_daemon_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cases = [
        ("syntax", "listen = \"127.0.0.1:0\"\n[docker\ntimeout = \"2m\"\n", "line 2"),
        ("number", "[network]\nsubnet_prefix = 1e309\n", "line 2"),
        ("unknown-key", "[lifecycle]\nnap = \"1s\"\n", "`nap`"),
        ("wrong-type", "[network]\nsubnet_prefix = \"big\"\n", "network.subnet_prefix"),
        ("bad-duration", "[lifecycle]\norphan_grace = \"soon\"\n", "lifecycle.orphan_grace"),
        ("huge-duration", "[lifecycle]\nexec_timeout = \"300000000000y\"\n", "lifecycle.exec_timeout"),
        ("classification", "max_classification = \"RESTRICTED\"\n", "max_classification"),
        ("unsafe-listen", "listen = \"0.0.0.0:50051\"\n", "listen"),
        (
            "identity",
            "[[identities]]\nname = \"a\"\nteam = \"t\"\nroles = [\"king\"]\ntoken_sha256 = \"00\"\n",
            "roles",
        ),
    ];
    for (name, content, key) in cases {
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, content).unwrap();
        // Both `--check` (ExecStartPre) and a plain start refuse it, before touching anything.
        for check in [true, false] {
            let mut args = vec![std::ffi::OsStr::new("--config"), file.as_os_str()];
            if check {
                args.push("--check".as_ref());
            }
            let out =
                sandpitd(&args, &[("SANDPIT__DATA_DIR", &data), ("SANDPIT__PROFILES_DIR", &repo("sandbox-profiles"))]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{name} (check {check}): {stderr}");
            assert!(stderr.starts_with("sandpitd: "), "{name}: {stderr}");
            assert!(
                stderr.contains(&file.display().to_string()) && stderr.contains(key),
                "{name}: {key} not in {stderr}"
            );
            assert!(out.stdout.is_empty(), "{name}");
        }
    }
    assert!(!data.exists(), "nothing was created for a config that does not load");
}

#[test]
fn a_malformed_profile_stops_a_normal_start_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    std::fs::write(profiles.join("good.toml"), "max_classification = \"OFFICIAL\"\nimages = [\"x\"]\n").unwrap();
    std::fs::write(
        profiles.join("long.toml"),
        "max_classification = \"OFFICIAL\"\nimages = [\"x\"]\n[lifetime]\ndefault_ttl = \"1h\"\nmax_ttl = \"1h\"\nmax_lifetime = \"10000y\"\n",
    )
    .unwrap();
    std::fs::write(profiles.join("broken.toml"), "max_classification = \"OFFICIAL\"\nimages = [\"x\"\n").unwrap();
    let out = sandpitd(
        &[],
        &[
            ("SANDPIT__PROFILES_DIR", &profiles),
            ("SANDPIT__DATA_DIR", &dir.path().join("data")),
            ("SANDPIT__LISTEN", Path::new("127.0.0.1:0")),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    for (file, field) in [("long.toml", "lifetime.max_lifetime"), ("broken.toml", "line ")] {
        let line = stderr.lines().find(|l| l.contains(file)).unwrap_or_else(|| panic!("{file} not named: {stderr}"));
        assert!(line.contains(&profiles.join(file).display().to_string()) && line.contains(field), "{line}");
    }
    assert!(!stderr.contains("good.toml"), "{stderr}");
}

/// `KEY=value` lines of an environment file.
fn env_file(path: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo(path)).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

/// The several-daemon files in deploy/fleet agree with each other and the
/// daemon: each instance's config (the shared file and its environment
/// file) passes `sandpitd --check`, the instances differ where they must
/// (addresses, data directories) and agree where they must (store, pool
/// and egress port, audit key and checkpoints), the balancer sends to
/// their addresses, and the template unit gives each its files.
#[test]
fn the_fleet_deployment_files_agree() {
    let config = repo("deploy/fleet/sandpit.toml");
    let haproxy = std::fs::read_to_string(repo("deploy/fleet/haproxy.cfg")).unwrap();
    let unit = std::fs::read_to_string(repo("deploy/fleet/sandpitd@.service")).unwrap();
    let settings = unit_settings(&unit);
    let get = |key: &str| settings.iter().filter(|(k, _)| *k == key).map(|(_, v)| *v).collect::<Vec<_>>();
    assert_eq!(get("EnvironmentFile"), ["/etc/sandpit/fleet/store.env", "/etc/sandpit/fleet/instance-%i.env"]);
    assert_eq!(get("ExecStart"), ["/usr/local/bin/sandpitd --config /etc/sandpit/fleet/sandpit.toml"]);
    assert_eq!(get("StateDirectory"), ["sandpit/%i"]);

    let mut seen = Vec::new();
    for instance in ["a", "b"] {
        let mut env = env_file(&format!("deploy/fleet/instance-{instance}.env"));
        env.push(("SANDPIT__PROFILES_DIR".into(), repo("sandbox-profiles").display().to_string()));
        let cfg = Config::load_from(Some(&config), env.clone()).unwrap();
        assert!(cfg.store.is_postgres(), "{instance}: on PostgreSQL");
        assert_eq!(cfg.data_dir, Path::new("/var/lib/sandpit").join(instance), "StateDirectory sandpit/%i");
        assert!(
            haproxy.contains(&format!("server {instance} {} check", cfg.listen)),
            "the balancer sends to {instance}'s gRPC address {}",
            cfg.listen
        );
        assert!(haproxy.contains(&format!("server {instance} {} check", cfg.dashboard.listen)));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandpitd"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SANDPIT__")) {
            cmd.env_remove(k);
        }
        let out = cmd.arg("--config").arg(&config).arg("--check").envs(env).output().unwrap();
        assert!(out.status.success(), "{instance}: {}", String::from_utf8_lossy(&out.stderr));
        seen.push(cfg);
    }
    let (a, b) = (&seen[0], &seen[1]);
    assert_ne!(a.listen, b.listen);
    assert_ne!(a.metrics.listen, b.metrics.listen);
    assert_ne!(a.dashboard.listen, b.dashboard.listen);
    assert_eq!(a.store.url, b.store.url);
    assert_eq!((a.network.egress_port, &a.network.subnet_pool), (b.network.egress_port, &b.network.subnet_pool));
    assert_eq!((a.signing_key(), a.checkpoint_dir()), (b.signing_key(), b.checkpoint_dir()), "one signer's files");
    assert_eq!(a.identities.len(), b.identities.len());
}
