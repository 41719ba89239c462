//! TLS and mutual TLS with certificates generated here: client certificates
//! map to identities by their exact subject; unknown or untrusted ones get
//! nowhere. The CLI presents a client certificate with `--cert`/`--key`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use sandpit_proto as proto;
use sandpit_proto::sandbox_service_client::SandboxServiceClient;
use tonic::transport::Identity;
use tonic::Code;

use crate::support::*;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    Ca { issuer: Issuer::new(params, key), pem }
}

/// A leaf certificate and key (PEM) signed by `ca`.
fn leaf(ca: &Ca, sans: &[&str], cn: &str, org: &str) -> (String, String) {
    leaf_with(ca, sans, &[(DnType::CommonName, cn), (DnType::OrganizationName, org)])
}

/// A leaf certificate and key (PEM) signed by `ca` whose subject holds
/// `subject`, one attribute per RDN, encoded in this order.
fn leaf_with(ca: &Ca, sans: &[&str], subject: &[(DnType, &str)]) -> (String, String) {
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    for (ty, value) in subject {
        params.distinguished_name.push(ty.clone(), *value);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Writes `pem` to `dir/name`.
fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, pem).unwrap();
    p
}

/// A daemon serving TLS that accepts client certificates signed by
/// `client_ca`, with `identities` (TOML) besides every test daemon's tokens.
struct Mtls {
    d: Daemon,
    client_ca: Ca,
    /// The PEM files, kept for clients: `server_ca` verifies the daemon.
    dir: tempfile::TempDir,
    server_ca: PathBuf,
}

async fn mtls_daemon(identities: &str) -> Mtls {
    let server_ca = ca("sandpit test server CA");
    let client_ca = ca("sandpit test client CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = leaf(&server_ca, &["localhost", "127.0.0.1"], "sandpitd", "ONS");
    let extra = format!(
        r#"
[tls]
cert = "{}"
key = "{}"
client_ca = "{}"

{identities}
"#,
        write(dir.path(), "server.crt", &cert).display(),
        write(dir.path(), "server.key", &key).display(),
        write(dir.path(), "client-ca.crt", &client_ca.pem).display(),
    );
    let d = Daemon::with(Options { extra_config: extra, server_ca: Some(server_ca.pem.clone()), ..Default::default() })
        .await;
    assert!(d.addr.starts_with("https://"), "{}", d.addr);
    let server_ca = write(dir.path(), "server-ca.crt", &server_ca.pem);
    Mtls { d, client_ca, dir, server_ca }
}

const CAROL: &str = r#"
[[identities]]
name = "carol"
team = "team-c"
roles = ["requester"]
cert_subject = "CN=carol, O=ONS"
"#;

/// A sandbox client presenting a client certificate (PEM certificate, key).
async fn with_cert(d: &Daemon, (cert, key): (String, String)) -> SandboxServiceClient<tonic::transport::Channel> {
    SandboxServiceClient::new(d.channel_with(Some(Identity::from_pem(cert, key))).await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_maps_certificates_to_identities() {
    let m = mtls_daemon(CAROL).await;
    let (d, client_ca) = (&m.d, &m.client_ca);
    let rogue_ca = ca("someone else's CA");

    // A certificate whose subject is a configured identity: carol, team-c.
    let (c, k) = leaf(client_ca, &[], "carol", "ONS");
    let mut carol = SandboxServiceClient::new(d.channel_with(Some(Identity::from_pem(c, k))).await.unwrap());
    let (c, k) = leaf(client_ca, &[], "carol", "ONS");
    let mut register = sandpit_proto::register_service_client::RegisterServiceClient::new(
        d.channel_with(Some(Identity::from_pem(c, k))).await.unwrap(),
    );
    let req = proto::RegisterExperimentRequest {
        title: "mTLS".into(),
        purpose: "certificates".into(),
        classification: "OFFICIAL".into(),
        ..Default::default()
    };
    let exp = register.register_experiment(req).await.unwrap().into_inner();
    assert_eq!((exp.owner.as_str(), exp.team.as_str()), ("carol", "team-c"));
    let sb = carol.create_sandbox(create_req(&exp.id, 60)).await.unwrap().into_inner();
    assert_eq!((sb.owner.as_str(), sb.team.as_str()), ("carol", "team-c"));

    // A trusted certificate with an unknown subject is unauthenticated.
    let (c, k) = leaf(client_ca, &[], "mallory", "ONS");
    let mut mallory = SandboxServiceClient::new(d.channel_with(Some(Identity::from_pem(c, k))).await.unwrap());
    let e = mallory.list_sandboxes(proto::ListSandboxesRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // A certificate from an untrusted CA never completes the handshake.
    let (c, k) = leaf(&rogue_ca, &[], "carol", "ONS");
    let rogue = match d.channel_with(Some(Identity::from_pem(c, k))).await {
        Err(_) => None,
        Ok(ch) => Some(SandboxServiceClient::new(ch).list_sandboxes(proto::ListSandboxesRequest::default()).await),
    };
    assert!(matches!(rogue, None | Some(Err(_))), "an untrusted client certificate must be refused");

    // No certificate: bearer tokens still work over TLS, and nothing else does.
    let mut a = d.client(TEAM_A).await;
    assert!(a.list_sandboxes(proto::ListSandboxesRequest::default()).await.is_ok());
    let mut anon = SandboxServiceClient::new(d.channel_with(None).await.unwrap());
    let e = anon.list_sandboxes(proto::ListSandboxesRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // Team visibility holds across credential kinds.
    let e = a.get_sandbox(proto::GetSandboxRequest { id: sb.id.clone() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

/// A certificate maps to an identity by its exact subject: a CN whose text
/// reads like more attributes is not them (this was once accepted: the
/// subject was compared as split text), nor is a subject with an extra one.
#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_maps_to_an_identity_only_by_its_exact_subject() {
    let m = mtls_daemon(
        r#"
[[identities]]
name = "dave"
team = "team-d"
roles = ["requester"]
cert_subject = "CN=dave, O=ONS"
"#,
    )
    .await;
    let (d, client_ca) = (&m.d, &m.client_ca);
    let list = || proto::ListSandboxesRequest::default();

    // The attack: a single CN "dave, O=ONS", and no O at all.
    let forged = leaf_with(client_ca, &[], &[(DnType::CommonName, "dave, O=ONS")]);
    let e = with_cert(d, forged).await.list_sandboxes(list()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "a CN holding ', O=ONS' must not be dave");
    // One attribute more than the identity's subject.
    let extra = leaf_with(
        client_ca,
        &[],
        &[(DnType::CommonName, "dave"), (DnType::OrganizationName, "ONS"), (DnType::OrganizationalUnitName, "x")],
    );
    let e = with_cert(d, extra).await.list_sandboxes(list()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // Values compare exactly.
    let e = with_cert(d, leaf(client_ca, &[], "Dave", "ONS")).await.list_sandboxes(list()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(d.log().contains("matches no identity"), "the refusal is logged with its reason:\n{}", d.log());

    // The real subject works, encoded CN first (as written) or O first
    // (the same subject as an RFC 4514 string is written: reversed).
    for subject in [
        [(DnType::CommonName, "dave"), (DnType::OrganizationName, "ONS")],
        [(DnType::OrganizationName, "ONS"), (DnType::CommonName, "dave")],
    ] {
        let (c, k) = leaf_with(client_ca, &[], &subject);
        let mut register = sandpit_proto::register_service_client::RegisterServiceClient::new(
            d.channel_with(Some(Identity::from_pem(c, k))).await.unwrap(),
        );
        let req = proto::RegisterExperimentRequest {
            title: "exact subjects".into(),
            purpose: "certificates".into(),
            classification: "OFFICIAL".into(),
            ..Default::default()
        };
        let exp = register.register_experiment(req).await.unwrap().into_inner();
        assert_eq!((exp.owner.as_str(), exp.team.as_str()), ("dave", "team-d"));
    }
}

/// Runs the CLI with `args`, `data_dir` as its data directory and no
/// SANDPIT_* settings but `env`.
fn sandpit_cli(data_dir: &Path, env: &[(&str, &Path)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandpit"));
    cmd.args(args);
    for var in ["SANDPIT_ADDR", "SANDPIT_TOKEN", "SANDPIT_CA_CERT", "SANDPIT_CERT", "SANDPIT_KEY"] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.env("SANDPIT_DATA_DIR", data_dir).output().expect("run sandpit")
}

/// The CLI presents a client certificate with --cert/--key (or SANDPIT_CERT,
/// SANDPIT_KEY): the certificate's identity acts, and a local token file is
/// not sent along (it would win: the daemon checks tokens first).
#[tokio::test(flavor = "multi_thread")]
async fn cli_presents_a_client_certificate() {
    let m = mtls_daemon(CAROL).await;
    let (c, k) = leaf(&m.client_ca, &[], "carol", "ONS");
    let cert = write(m.dir.path(), "carol.crt", &c);
    let key = write(m.dir.path(), "carol.key", &k);
    // A local data directory whose token is alice's.
    let data_dir = tempfile::tempdir().unwrap();
    std::fs::write(data_dir.path().join("local-token"), format!("{TEAM_A}\n")).unwrap();
    let ca = m.server_ca.to_str().unwrap();
    let tls = ["--addr", m.d.addr.as_str(), "--ca-cert", ca];

    let register = [
        "register",
        "--title",
        "mTLS from the CLI",
        "--purpose",
        "certificates",
        "--classification",
        "OFFICIAL",
        "--json",
    ];
    let args = [&tls[..], &["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()], &register].concat();
    let out = sandpit_cli(data_dir.path(), &[], &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exp: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((exp["owner"].as_str(), exp["team"].as_str()), (Some("carol"), Some("team-c")), "{exp}");

    // The same from the environment.
    let out = sandpit_cli(
        data_dir.path(),
        &[("SANDPIT_CERT", &cert), ("SANDPIT_KEY", &key)],
        &[&tls[..], &["ls", "--json"]].concat(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok());

    // A token given explicitly is still sent, and decides.
    let args =
        [&tls[..], &["--token", TEAM_A, "--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()], &register]
            .concat();
    let out = sandpit_cli(data_dir.path(), &[], &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exp: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(exp["owner"].as_str(), Some("alice"), "{exp}");

    // A trusted certificate of no identity: UNAUTHENTICATED, in one line.
    let (c, k) = leaf(&m.client_ca, &[], "mallory", "ONS");
    let (cert, key) = (write(m.dir.path(), "m.crt", &c), write(m.dir.path(), "m.key", &k));
    let out = sandpit_cli(
        data_dir.path(),
        &[],
        &[&tls[..], &["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap(), "ls"]].concat(),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("sandpit: UNAUTHENTICATED") && err.lines().count() == 1, "{err}");
}

/// --cert and --key go together, and must be readable: refused locally, in
/// one line naming the flag (and the file), before any connection.
#[test]
fn cli_client_certificate_flags_are_checked_locally() {
    let dir = tempfile::tempdir().unwrap();
    let pem = write(dir.path(), "some.pem", "not checked before both are given\n");
    let pem = pem.to_str().unwrap();
    let missing = dir.path().join("absent.pem");
    let missing = missing.to_str().unwrap();
    let https = ["--addr", "https://127.0.0.1:1", "--ca-cert", pem];
    let local_error = |out: Output, names: &[&str]| {
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.starts_with("sandpit: "), "{err}");
        assert!(!err.contains("UNAVAILABLE"), "refused before connecting: {err}");
        for n in names {
            assert!(err.contains(n), "{err} should name {n}");
        }
    };
    let run = |env: &[(&str, &Path)], args: &[&str]| sandpit_cli(dir.path(), env, &[&https[..], args].concat());

    local_error(run(&[], &["--cert", pem, "ls"]), &["--key"]);
    local_error(run(&[], &["--key", pem, "ls"]), &["--cert"]);
    local_error(run(&[("SANDPIT_CERT", Path::new(pem))], &["ls"]), &["--key"]);
    local_error(run(&[], &["--cert", missing, "--key", pem, "ls"]), &["--cert", missing]);
    local_error(run(&[], &["--cert", pem, "--key", missing, "ls"]), &["--key", missing]);
    // A client certificate needs TLS.
    let out = sandpit_cli(dir.path(), &[], &["--addr", "http://127.0.0.1:1", "--cert", pem, "--key", pem, "ls"]);
    local_error(out, &["--cert", "https://"]);
}

const DORA: &str = r#"
[[identities]]
name = "dora"
team = "alg"
roles = ["auditor"]
cert_subject = "CN=dora, O=ONS"
"#;

/// curl against the dashboard, verifying it with `server_ca`, presenting
/// `cert` if given: the response head and body.
fn curl(server_ca: &Path, cert: Option<(&Path, &Path)>, args: &[&str]) -> (String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-i", "--max-time", "20", "--cacert"]).arg(server_ca);
    if let Some((c, k)) = cert {
        cmd.arg("--cert").arg(c).arg("--key").arg(k);
    }
    let out = cmd.args(args).output().expect("curl (apt-get install curl)");
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap().replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap();
    (head.to_string(), body.to_string())
}

/// Over TLS the dashboard uses the daemon's certificate, and a client
/// certificate that maps to an auditor signs in with one click; the cookie
/// is then Secure and `__Host-` named. A requester's certificate is refused.
#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_serves_tls_and_signs_in_by_client_certificate() {
    let m = mtls_daemon(&format!("{DORA}{CAROL}")).await;
    let url = std::fs::read_to_string(m.d.data_dir().join("dashboard.addr")).unwrap().trim().to_string();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let dir = m.dir.path();
    let (c, k) = leaf(&m.client_ca, &[], "dora", "ONS");
    let dora = (write(dir, "dora.crt", &c), write(dir, "dora.key", &k));
    let (c, k) = leaf(&m.client_ca, &[], "carol", "ONS");
    let carol = (write(dir, "carol.crt", &c), write(dir, "carol.key", &k));

    let (_, body) = curl(&m.server_ca, None, &[&format!("{url}sign-in")]);
    assert!(body.contains("name=\"token\"") && !body.contains("client certificate)"), "{body}");
    let dora = Some((dora.0.as_path(), dora.1.as_path()));
    let (_, body) = curl(&m.server_ca, dora, &[&format!("{url}sign-in")]);
    assert!(body.contains("Continue as dora (client certificate)"), "{body}");

    let (head, _) =
        curl(&m.server_ca, dora, &["-d", "method=certificate&next=/verification", &format!("{url}sign-in")]);
    assert!(head.starts_with("HTTP/1.1 303"), "{head}");
    let set = head.lines().find_map(|l| l.strip_prefix("set-cookie: ")).expect("a cookie").to_string();
    assert!(set.starts_with("__Host-sandpit-session=") && set.ends_with("; Secure"), "{set}");
    let cookie = set.split(';').next().unwrap();
    let (head, body) = curl(&m.server_ca, None, &["-H", &format!("Cookie: {cookie}"), &format!("{url}verification")]);
    assert!(head.starts_with("HTTP/1.1 200") && body.contains("dora (alg, auditor)"), "{head}\n{body}");

    let carol = Some((carol.0.as_path(), carol.1.as_path()));
    let (head, body) = curl(&m.server_ca, carol, &["-d", "method=certificate", &format!("{url}sign-in")]);
    assert!(head.starts_with("HTTP/1.1 403") && body.contains("carol has [requester]"), "{head}\n{body}");
    // Claiming a certificate without presenting one gets nowhere.
    let (head, _) = curl(&m.server_ca, None, &["-d", "method=certificate", &format!("{url}sign-in")]);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
}
