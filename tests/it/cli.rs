//! The `sandpit` CLI as scripts use it: flags, `--json` field names, exit codes.

use std::process::{Command, Output};

use crate::support::*;

pub fn sandpit(d: &Daemon, token: &str, args: &[&str]) -> Output {
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

/// A register entry written to attack its readers: a title a spreadsheet
/// would run, a purpose that forges an audit line and clears the terminal,
/// a risk owner that reorders text. The CLI shows every one escaped, and
/// the CSV export neutralises the formula.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_text_is_shown_inert_and_exported_as_text() {
    let d = Daemon::start().await;
    let title = "=HYPERLINK(\"http://evil.example/\",\"Click\")";
    let forged =
        "harmless\n    99  2026-11-29T00:00:00Z  amir       approver  sandpit.v1.RegisterService/ApproveExperiment";
    let purpose = format!("{forged}\x1b[2J\x1b]0;owned\x07\u{9b}31m");
    let owner = "\u{202e}nimda";
    let req = sandpit_proto::RegisterExperimentRequest {
        title: title.into(),
        purpose: purpose.clone(),
        classification: "OFFICIAL".into(),
        risks: vec![sandpit_proto::Risk {
            description: "-2+3".into(),
            likelihood: "low".into(),
            impact: "low".into(),
            mitigation: "@SUM(A1:A9)".into(),
            owner: owner.into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let id = d.register(TEAM_A).await.register_experiment(req).await.unwrap().into_inner().id;

    let raw = |out: &Output| {
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        let bad: Vec<char> = text
            .chars()
            .filter(|c| *c != '\n' && (c.is_control() || sandpit_core::text::is_direction_control(*c)))
            .collect();
        assert!(bad.is_empty(), "raw control characters reach the terminal: {bad:?} in {text}");
        text
    };
    for (token, args) in [
        (TEAM_A, vec!["experiment", id.as_str()]),
        (TEAM_A, vec!["experiments"]),
        (AUDITOR, vec!["audit", "log"]),
        (AUDITOR, vec!["audit", "active"]),
        (TEAM_A, vec!["experiment", id.as_str(), "--json"]),
        (AUDITOR, vec!["audit", "log", "--json"]),
    ] {
        let out = sandpit(&d, token, &args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let text = raw(&out);
        assert!(!text.lines().any(|l| l.trim_start().starts_with("99  2026")), "{args:?}: a forged line:\n{text}");
        if args.contains(&"--json") && args[0] == "experiment" {
            // The same values, escaped as JSON allows.
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert!(v.to_string().contains("\\u001b[2J"), "{v}");
        }
    }
    let shown = String::from_utf8_lossy(&sandpit(&d, TEAM_A, &["experiment", &id]).stdout).to_string();
    assert!(
        shown.contains("harmless\\n    99") && shown.contains("\\u{1b}[2J") && shown.contains("\\u{202e}nimda"),
        "{shown}"
    );

    // A refusal's message is escaped too.
    let out = sandpit(&d, TEAM_A, &["get", "sb-\u{1b}[2J"]);
    assert_eq!(out.status.code(), Some(1));
    raw(&out);

    let out = sandpit(&d, AUDITOR, &["audit", "export", "--kind", "register", "--format", "csv"]);
    assert!(out.status.success());
    let csv = String::from_utf8_lossy(&out.stdout);
    let row = csv.split("\r\n").find(|r| r.starts_with(&id)).unwrap();
    assert!(row.contains(",\"'=HYPERLINK(\"\"http://evil.example/\"\",\"\"Click\"\")\","), "{row}");
    assert!(row.contains("\"'-2+3 (likelihood low"), "a cell starting with '-' is neutralised: {row}");
    assert!(!csv.split("\r\n").any(|r| r.split(',').any(|cell| cell.starts_with(['=', '+', '-', '@']))), "{csv}");
}
