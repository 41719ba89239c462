//! TLS to the database, when the URL asks for it (`sslmode=require`):
//! rustls, verifying the server's certificate and name against the CA in
//! `[store] ca_file`, or the system's roots. Any other `sslmode` connects
//! in the clear (libpq's `prefer` would try TLS without verifying it, which
//! protects against nothing an attacker on the path cannot undo).

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{Result, StoreError};
use sandpit_core::Error;

/// Where Debian (and most distributions) keep the system's roots.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The connector for `config`, which is set to connect in the clear unless
/// it requires TLS.
pub(crate) fn connector(config: &mut tokio_postgres::Config, ca_file: Option<&Path>) -> Result<MakeRustlsConnect> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Core(Error::Store(format!("TLS: {e}"))))?;
    let mut roots = rustls::RootCertStore::empty();
    if config.get_ssl_mode() == SslMode::Require {
        let (path, named) = match ca_file {
            Some(p) => (p, "store.ca_file"),
            None => (Path::new(SYSTEM_ROOTS), "the system's CA roots"),
        };
        let bad = |e: &dyn std::fmt::Display| Error::Store(format!("{named} {}: {e}", path.display()));
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
            roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        }
        if roots.is_empty() {
            return Err(bad(&"holds no certificate").into());
        }
    } else {
        config.ssl_mode(SslMode::Disable);
    }
    Ok(MakeRustlsConnect::new(builder.with_root_certificates(roots).with_no_client_auth()))
}
