//! TLS and mutual TLS with certificates generated here: client certificates
//! map to identities by their exact subject; unknown or untrusted ones get
//! nowhere.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use sandpit::proto;
use sandpit::proto::sandbox_service_client::SandboxServiceClient;
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
    /// The PEM files.
    _dir: tempfile::TempDir,
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
    Mtls { d, client_ca, _dir: dir }
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
    let mut register = sandpit::proto::register_service_client::RegisterServiceClient::new(
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
        let mut register = sandpit::proto::register_service_client::RegisterServiceClient::new(
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
