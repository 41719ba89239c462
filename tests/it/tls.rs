//! TLS and mutual TLS with certificates generated here: client certificates
//! map to identities by subject; unknown or untrusted ones get nowhere.

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
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.distinguished_name.push(DnType::OrganizationName, org);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_maps_certificates_to_identities() {
    let server_ca = ca("sandpit test server CA");
    let client_ca = ca("sandpit test client CA");
    let rogue_ca = ca("someone else's CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = leaf(&server_ca, &["localhost", "127.0.0.1"], "sandpitd", "ONS");
    let write = |name: &str, pem: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    let extra = format!(
        r#"
[tls]
cert = "{}"
key = "{}"
client_ca = "{}"

[[identities]]
name = "carol"
team = "team-c"
roles = ["requester"]
cert_subject = "CN=carol, O=ONS"
"#,
        write("server.crt", &cert).display(),
        write("server.key", &key).display(),
        write("client-ca.crt", &client_ca.pem).display(),
    );
    let d = Daemon::with(Options { extra_config: extra, server_ca: Some(server_ca.pem.clone()), ..Default::default() })
        .await;
    assert!(d.addr.starts_with("https://"), "{}", d.addr);

    // A certificate whose subject is a configured identity: carol, team-c.
    let (c, k) = leaf(&client_ca, &[], "carol", "ONS");
    let mut carol = SandboxServiceClient::new(d.channel_with(Some(Identity::from_pem(c, k))).await.unwrap());
    let (c, k) = leaf(&client_ca, &[], "carol", "ONS");
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
    let (c, k) = leaf(&client_ca, &[], "mallory", "ONS");
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
