//! The dashboard over real HTTP from the real daemon: who may sign in, what
//! the cookie says, what each role sees, and that the pages show what the
//! register and the audit log hold (escaped). The browser test, in
//! headless Chromium, is `clients/python/tests/test_dashboard.py`.

use sandpit_proto as proto;

use crate::support::*;

/// One HTTP/1.1 exchange on a fresh connection: status, head, body.
pub(crate) async fn http(
    base: &str,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = tokio::net::TcpStream::connect(host).await.expect("connect to the dashboard");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(c) = cookie {
        req += &format!("Cookie: {c}\r\n");
    }
    let body = form.unwrap_or("");
    if form.is_some() {
        req += &format!("Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n", body.len());
    }
    req += "\r\n";
    req += body;
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status line");
    (status, head.to_string(), body.to_string())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| l.split_once(": ").filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

/// Signs in with `token`: the session cookie (`name=value`) and the Set-Cookie line.
pub(crate) async fn sign_in(base: &str, token: &str) -> (String, String) {
    let (status, head, body) = http(base, "POST", "/sign-in", None, Some(&format!("token={token}&next=/audit"))).await;
    assert_eq!(status, 303, "{head}\n{body}");
    assert_eq!(header(&head, "location"), Some("/audit"));
    let set = header(&head, "set-cookie").expect("a session cookie").to_string();
    (set.split(';').next().unwrap().to_string(), set)
}

pub(crate) fn base(d: &Daemon) -> String {
    std::fs::read_to_string(d.data_dir().join("dashboard.addr")).expect("dashboard.addr").trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn approvers_auditors_and_operators_sign_in_and_requesters_do_not() {
    let d = Daemon::start().await;
    let base = base(&d);
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");

    // Not signed in: to the sign-in page, remembering where to come back.
    let (status, head, _) = http(&base, "GET", "/active", None, None).await;
    assert_eq!((status, header(&head, "location")), (303, Some("/sign-in?next=%2Factive")));
    let (status, head, body) = http(&base, "GET", "/sign-in?next=/active", None, None).await;
    assert_eq!(status, 200);
    assert!(body.contains("<label for=\"token\">") && body.contains("type=\"password\""), "{body}");
    assert!(header(&head, "content-security-policy").unwrap().contains("default-src 'none'"), "{head}");
    assert_eq!(header(&head, "cache-control"), Some("no-store"));

    // A token nobody has, and a requester's, are refused and on record.
    let (status, _, body) = http(&base, "POST", "/sign-in", None, Some("token=not-a-token")).await;
    assert_eq!(status, 401, "{body}");
    let (status, head, body) = http(&base, "POST", "/sign-in", None, Some(&format!("token={TEAM_A}"))).await;
    assert_eq!(status, 403, "{body}");
    assert!(header(&head, "set-cookie").is_none());
    assert!(body.contains("approvers, auditors and operators") && body.contains("alice has [requester]"), "{body}");
    let q = proto::QueryAuditLogRequest { action: "dashboard-sign-in".into(), ..Default::default() };
    let events = d.audit(AUDITOR).await.query_audit_log(q.clone()).await.unwrap().into_inner().events;
    let refused: Vec<(&str, &str, &str)> =
        events.iter().map(|e| (e.actor.as_str(), e.outcome.as_str(), e.code.as_str())).collect();
    assert_eq!(refused, [("anonymous", "denied", "UNAUTHENTICATED"), ("alice", "denied", "PERMISSION_DENIED")]);

    // The cookie: HttpOnly, SameSite=Strict, with an expiry; not Secure over plaintext.
    let (cookie, set) = sign_in(&base, AUDITOR).await;
    assert!(cookie.starts_with("sandpit-session=") && cookie.len() == "sandpit-session=".len() + 64, "{set}");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(set.split("; ").any(|a| a == attr), "{attr} in {set}");
    }
    assert!(!set.contains("Secure"), "{set}");
    let events = d.audit(AUDITOR).await.query_audit_log(q).await.unwrap().into_inner().events;
    let last = events.last().unwrap();
    assert_eq!((last.actor.as_str(), last.role.as_str(), last.outcome.as_str()), ("ada", "auditor", "succeeded"));
    assert!(last.source.starts_with("127.0.0.1:"), "{last:?}");

    // The auditor sees every page; the approver not the audit log's; the operator neither.
    for page in ["/active", "/approvals", "/register", "/audit", "/verification"] {
        let (status, _, body) = http(&base, "GET", page, Some(&cookie), None).await;
        assert_eq!(status, 200, "{page}: {body}");
        assert!(body.contains("ada (alg, auditor)"), "{page}");
    }
    let (approver, _) = sign_in(&base, APPROVER).await;
    let (operator, _) = sign_in(&base, OPERATOR).await;
    for (who, cookie, page, want) in [
        ("approver", &approver, "/active", 200),
        ("approver", &approver, "/approvals", 200),
        ("approver", &approver, "/audit", 403),
        ("approver", &approver, "/verification", 403),
        ("operator", &operator, "/register", 200),
        ("operator", &operator, "/active", 403),
        ("operator", &operator, "/audit", 403),
    ] {
        let (status, _, body) = http(&base, "GET", page, Some(cookie), None).await;
        assert_eq!(status, want, "{who} {page}: {body}");
    }
    let (_, _, body) = http(&base, "GET", "/active", Some(&approver), None).await;
    assert!(body.contains("href=\"/approvals\"") && !body.contains("href=\"/audit\""), "nav for the role: {body}");

    // Signing out ends the session (the form carries the page's token).
    let (_, _, body) = http(&base, "GET", "/register", Some(&operator), None).await;
    let csrf = body.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let (status, _, _) = http(&base, "POST", "/sign-out", Some(&operator), Some("csrf=wrong")).await;
    assert_eq!(status, 403, "a forged sign-out is refused");
    let (status, head, _) = http(&base, "POST", "/sign-out", Some(&operator), Some(&format!("csrf={csrf}"))).await;
    assert_eq!(status, 303);
    assert!(header(&head, "set-cookie").unwrap().contains("Max-Age=0"));
    let (status, _, _) = http(&base, "GET", "/register", Some(&operator), None).await;
    assert_eq!(status, 303, "signed out");

    // Only local paths to come back to.
    let (_, head, _) =
        http(&base, "POST", "/sign-in", None, Some(&format!("token={AUDITOR}&next=%2F%2Fevil.example%2F"))).await;
    assert_eq!(header(&head, "location"), Some("/active"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pages_show_the_register_the_trail_and_the_chain() {
    let d = Daemon::start().await;
    let base = base(&d);
    // An experiment whose words would be markup if not escaped, with a risk, approved with conditions.
    let req = proto::RegisterExperimentRequest {
        title: "Census <script>alert(1)</script> linkage".into(),
        purpose: "Match \"records\" & learn".into(),
        classification: "OFFICIAL-SENSITIVE".into(),
        ai_tools: vec!["pandas".into()],
        risks: vec![proto::Risk {
            description: "Re-identification".into(),
            likelihood: "low".into(),
            impact: "high".into(),
            mitigation: "Aggregates only".into(),
            owner: "alice".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let exp = d.register(TEAM_A).await.register_experiment(req).await.unwrap().into_inner();
    let (auditor, _) = sign_in(&base, AUDITOR).await;
    let (_, _, body) = http(&base, "GET", "/approvals", Some(&auditor), None).await;
    assert!(body.contains(&format!("href=\"/experiments/{}\"", exp.id)), "pending: {body}");
    assert!(body.contains("Census &lt;script&gt;alert(1)&lt;/script&gt; linkage") && !body.contains("<script>"));

    let decide = proto::DecideExperimentRequest {
        id: exp.id.clone(),
        conditions: "Aggregates only; no export".into(),
        ..Default::default()
    };
    d.register(APPROVER).await.approve_experiment(decide).await.unwrap();
    let mut c = d.client(TEAM_A).await;
    let sb = c.create_sandbox(create_req(&exp.id, 120)).await.unwrap().into_inner();

    let (_, _, body) = http(&base, "GET", "/active", Some(&auditor), None).await;
    for want in [
        exp.id.as_str(),
        "team-a",
        "OFFICIAL-SENSITIVE",
        "Approved by amir (alg)",
        "conditions: Aggregates only; no export",
        "Re-identification",
        "likelihood low, impact high",
        sb.id.as_str(),
        "left</li>",
    ] {
        assert!(body.contains(want), "{want} on the active page: {body}");
    }

    // Its page: details, sandboxes and the timeline from the audit log.
    let (status, _, body) = http(&base, "GET", &format!("/experiments/{}", exp.id), Some(&auditor), None).await;
    assert_eq!(status, 200);
    for want in [
        "Match &quot;records&quot; &amp; learn",
        "Register experiment",
        "Approve experiment",
        "Create sandbox",
        sb.id.as_str(),
    ] {
        assert!(body.contains(want), "{want} on the experiment page: {body}");
    }
    let (status, _, _) = http(&base, "GET", "/experiments/exp-0000000000", Some(&auditor), None).await;
    assert_eq!(status, 404);
    let (status, _, body) = http(&base, "GET", "/experiments/..%2Fx", Some(&auditor), None).await;
    assert_eq!(status, 400, "{body}");

    // Close it with lessons learnt; the register finds it by them.
    let close = proto::CloseExperimentRequest {
        id: exp.id.clone(),
        outcome: proto::ExperimentOutcome::Succeeded as i32,
        lessons_learnt: "Blocking on postcode halves the comparisons".into(),
        ..Default::default()
    };
    d.register(APPROVER).await.close_experiment(close).await.unwrap();
    let (_, _, body) = http(&base, "GET", "/register?q=POSTCODE+halves&status=closed", Some(&auditor), None).await;
    assert!(body.contains("1 of 1 experiments") && body.contains("Blocking on postcode"), "{body}");
    let (_, _, body) = http(&base, "GET", "/register?q=nothing-like-this", Some(&auditor), None).await;
    assert!(body.contains("No experiment matches."), "{body}");
    let (status, _, body) = http(&base, "GET", "/register?status=maybe", Some(&auditor), None).await;
    assert!(status == 400 && body.contains("status"), "{body}");

    // Audit search, and a bad filter named.
    let path = format!("/audit?sandbox={}&action=sandpit.v1.SandboxService%2FCreateSandbox", sb.id);
    let (_, _, body) = http(&base, "GET", &path, Some(&auditor), None).await;
    assert!(body.contains("Create sandbox") && body.contains("alice (requester)"), "{body}");
    assert_eq!(body.matches("<tr>").count(), 2, "a heading and one event: {body}");
    let (status, _, body) = http(&base, "GET", "/audit?since=yesterday", Some(&auditor), None).await;
    assert!(status == 400 && body.contains("since"), "{body}");

    // The chain: verified, with a signed checkpoint; a full check on request.
    let (_, _, body) = http(&base, "GET", "/verification?full=1", Some(&auditor), None).await;
    assert!(body.contains("verified</span> through record"), "{body}");
    assert!(body.contains("intact</span> All"), "{body}");
}
