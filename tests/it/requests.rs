//! Bad requests get the right status and a message naming the field or rule;
//! teams cannot see or touch each other's sandboxes.

use sandpit_proto::{self as proto, CreateSandboxRequest};
use tonic::Code;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_ttl_below_ten_seconds_is_refused_naming_the_field() {
    // The embedded default minimum (the other tests lower it to stay quick).
    let d = Daemon::with(Options { min_ttl: "10s", ..Default::default() }).await;
    let mut c = d.client(TEAM_A).await;
    let e = c.create_sandbox(create_req(&d.exp_a, 9)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("ttl: 9s is below the minimum of 10s"), "{}", e.message());
    let sb = create(&mut c, &d.exp_a, 10).await;
    let short = proto::ExtendSandboxRequest {
        id: sb.id.clone(),
        ttl: Some(pbjson_types::Duration { seconds: 9, nanos: 999_000_000 }),
    };
    let e = c.extend_sandbox(short).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("ttl: 9s 999ms is below the minimum"), "{}", e.message());
    c.extend_sandbox(proto::ExtendSandboxRequest { id: sb.id, ttl: ttl(60) }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_create_requests_are_refused_with_the_right_status() {
    let d = Daemon::start().await;
    let mut c = d.client(TEAM_A).await;
    let base = || create_req(&d.exp_a, 60);
    let cases: Vec<(&str, CreateSandboxRequest, Code, &str)> = vec![
        (
            "unknown profile",
            CreateSandboxRequest { profile: "nope".into(), ..base() },
            Code::InvalidArgument,
            "profile: unknown profile 'nope'",
        ),
        (
            "empty profile",
            CreateSandboxRequest { profile: "".into(), ..base() },
            Code::InvalidArgument,
            "profile: must not be empty",
        ),
        (
            "empty experiment",
            CreateSandboxRequest { experiment: "".into(), ..base() },
            Code::InvalidArgument,
            "experiment: must not be empty",
        ),
        (
            "bad experiment",
            CreateSandboxRequest { experiment: "a;rm -rf".into(), ..base() },
            Code::InvalidArgument,
            "experiment:",
        ),
        (
            "empty classification",
            CreateSandboxRequest { classification: "".into(), ..base() },
            Code::InvalidArgument,
            "classification: must not be empty",
        ),
        (
            "unknown classification",
            CreateSandboxRequest { classification: "RESTRICTED".into(), ..base() },
            Code::InvalidArgument,
            "classification:",
        ),
        ("zero ttl", CreateSandboxRequest { ttl: ttl(0), ..base() }, Code::InvalidArgument, "ttl: must be above zero"),
        ("negative ttl", CreateSandboxRequest { ttl: ttl(-5), ..base() }, Code::InvalidArgument, "ttl:"),
        ("huge ttl", CreateSandboxRequest { ttl: ttl(i64::MAX), ..base() }, Code::InvalidArgument, "ttl:"),
        (
            "ttl over the profile max",
            CreateSandboxRequest { ttl: ttl(3600), ..base() },
            Code::PermissionDenied,
            "rule 'ttl'",
        ),
        (
            "image not allowed",
            CreateSandboxRequest { image: "alpine:latest".into(), ..base() },
            Code::PermissionDenied,
            "rule 'image-allowlist'",
        ),
        (
            "above the profile",
            CreateSandboxRequest { classification: "OFFICIAL-SENSITIVE".into(), ..base() },
            Code::PermissionDenied,
            "rule 'profile-classification'",
        ),
        (
            "above the host ceiling",
            CreateSandboxRequest { classification: "SECRET".into(), ..base() },
            Code::PermissionDenied,
            "rule 'host-ceiling'",
        ),
    ];
    for (what, req, code, msg) in cases {
        let e = c.create_sandbox(req).await.expect_err(what);
        assert_eq!(e.code(), code, "{what}: {}", e.message());
        assert!(e.message().contains(msg), "{what}: '{}' lacks '{msg}'", e.message());
    }
    assert!(d.containers().await.is_empty(), "no refused request provisioned anything");
    let all =
        c.list_sandboxes(proto::ListSandboxesRequest { include_ended: true, ..Default::default() }).await.unwrap();
    assert!(all.into_inner().sandboxes.is_empty(), "no refused request left a record");
}

#[tokio::test(flavor = "multi_thread")]
async fn teams_cannot_see_or_touch_each_others_sandboxes() {
    let d = Daemon::start().await;
    let mut a = d.client(TEAM_A).await;
    let mut b = d.client(TEAM_B).await;
    let sb = create(&mut a, &d.exp_a, 120).await;
    let not_found = |e: tonic::Status| {
        assert_eq!(e.code(), Code::NotFound, "{}", e.message());
        assert!(e.message().contains(&sb.id));
    };
    not_found(b.get_sandbox(proto::GetSandboxRequest { id: sb.id.clone() }).await.unwrap_err());
    not_found(b.extend_sandbox(proto::ExtendSandboxRequest { id: sb.id.clone(), ttl: ttl(60) }).await.unwrap_err());
    not_found(b.delete_sandbox(proto::DeleteSandboxRequest { id: sb.id.clone() }).await.unwrap_err());
    let exec = proto::ExecRequest { id: sb.id.clone(), command: vec!["true".into()], ..Default::default() };
    not_found(b.exec(exec).await.unwrap_err());
    let list =
        b.list_sandboxes(proto::ListSandboxesRequest { include_ended: true, ..Default::default() }).await.unwrap();
    assert!(list.into_inner().sandboxes.is_empty());
    assert!(container_exists(&sb.container_id).await, "still running after team b's attempts");

    // Auditors see every team's sandboxes but cannot change them.
    let mut aud = d.client(AUDITOR).await;
    let list = aud.list_sandboxes(proto::ListSandboxesRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.sandboxes.len(), 1);
    let e = aud.delete_sandbox(proto::DeleteSandboxRequest { id: sb.id.clone() }).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = aud.create_sandbox(create_req(&d.exp_a, 60)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // Missing or unknown credentials.
    let mut anon = d.anonymous().await;
    assert_eq!(
        anon.list_sandboxes(proto::ListSandboxesRequest::default()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut wrong = d.client("not-a-token").await;
    assert_eq!(
        wrong.get_sandbox(proto::GetSandboxRequest { id: sb.id.clone() }).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // Empty ids name the field.
    let e = a.get_sandbox(proto::GetSandboxRequest { id: "".into() }).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "id: must not be empty"));
}
