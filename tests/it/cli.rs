//! The `sandpit` CLI as scripts use it: flags, `--json` field names, exit codes.

use std::process::{Command, Output};

use crate::support::*;

fn sandpit(d: &Daemon, token: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sandpit"))
        .args(args)
        .env("SANDPIT_ADDR", &d.addr)
        .env("SANDPIT_TOKEN", token)
        .env_remove("SANDPIT_DATA_DIR")
        .output()
        .expect("run sandpit")
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_create_get_exec_extend_rm() {
    let d = Daemon::start().await;
    let out = sandpit(
        &d,
        TEAM_A,
        &[
            "create",
            "--experiment",
            &d.exp_a,
            "--profile",
            PROFILE,
            "--classification",
            "OFFICIAL",
            "--ttl",
            "5m",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sb: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in [
        "id",
        "experiment",
        "owner",
        "team",
        "profile",
        "classification",
        "image",
        "state",
        "createdAt",
        "expiresAt",
        "containerId",
    ] {
        assert!(sb.get(field).is_some(), "--json lacks {field}: {sb}");
    }
    assert_eq!(sb["state"], "SANDBOX_STATE_RUNNING");
    let id = sb["id"].as_str().unwrap();

    let out = sandpit(&d, TEAM_A, &["exec", id, "--", "sh", "-c", "echo hello; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "exec exits with the command's code");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");

    let out = sandpit(&d, TEAM_A, &["ls"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("ID") && table.contains(id) && table.contains("running"), "{table}");

    let out = sandpit(&d, TEAM_A, &["extend", id, "--ttl", "2h"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("sandpit: PERMISSION_DENIED: "), "{err}");

    let out = sandpit(&d, TEAM_B, &["get", id]);
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("sandpit: NOT_FOUND: "));

    let out = sandpit(&d, TEAM_A, &["rm", id]);
    assert!(out.status.success());
    assert!(d.containers().await.is_empty());
}
