//! The dashboard for the AI Leadership Group: approvers, auditors and
//! operators read the register, approvals, risks, live sandboxes and the
//! verified audit trail in a browser.
//!
//! Read-only, server-rendered HTML that needs no JavaScript, on a listener
//! of its own (`[dashboard]`). It uses the daemon's identities: a person
//! signs in with their token, or over mutual TLS with their client
//! certificate, and gets a session cookie (HttpOnly, SameSite=Strict,
//! Secure over TLS, expiring after `dashboard.session_ttl`). Each page is
//! open to the roles of the gRPC call behind it ([`html::Nav::roles`]), so
//! the dashboard shows no one more than the API would. Requesters cannot
//! sign in. Sign-ins, refusals and sign-outs are in the audit log.

pub(crate) mod html;
mod pages;
mod sessions;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Form, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::checkpoints::Checkpointer;
use crate::identity::Identities;
use html::Nav;
use sandpit_core::audit::{AuditEntry, Outcome};
use sandpit_core::auth::{Caller, Role};
use sandpit_core::lifecycle::Manager;
use sessions::Sessions;

/// Audit actions of the dashboard.
pub const SIGN_IN: &str = "dashboard-sign-in";
pub const SIGN_OUT: &str = "dashboard-sign-out";

/// The roles that may sign in.
const DASHBOARD_ROLES: [Role; 3] = [Role::Auditor, Role::Approver, Role::Operator];

/// A TLS handshake or a request's headers must arrive within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a connection is kept, however busy: a browser opens another.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 256;

/// What the dashboard reads, and who may read it.
pub struct Dashboard {
    manager: Arc<Manager>,
    checkpoints: Arc<Checkpointer>,
    identities: Arc<Identities>,
    sessions: Sessions,
    /// Served over TLS: the cookie is Secure (and `__Host-` named).
    secure: bool,
    /// The host's ATRS defaults, for the exports.
    transparency: std::collections::BTreeMap<String, String>,
}

/// The connection a request came on: its peer, and the identity of the
/// client certificate it presented (verified by the TLS layer), if any.
#[derive(Clone)]
struct Peer {
    addr: SocketAddr,
    certificate: Option<Result<Caller, &'static str>>,
}

impl Dashboard {
    pub fn new(
        manager: Arc<Manager>,
        checkpoints: Arc<Checkpointer>,
        identities: Arc<Identities>,
        session_ttl: Duration,
        secure: bool,
        transparency: std::collections::BTreeMap<String, String>,
    ) -> Arc<Dashboard> {
        let sessions = Sessions::new(session_ttl);
        Arc::new(Dashboard { manager, checkpoints, identities, sessions, secure, transparency })
    }

    fn cookie_name(&self) -> &'static str {
        if self.secure {
            "__Host-sandpit-session"
        } else {
            "sandpit-session"
        }
    }

    /// The session cookie's value, the caller and the sign-out token.
    fn session(&self, headers: &HeaderMap) -> Option<(String, Caller, String)> {
        let name = self.cookie_name();
        let cookie = headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())?;
        let (caller, csrf) = self.sessions.get(&cookie)?;
        Some((cookie, caller, csrf))
    }

    /// The signed-in caller of a request, allowed to see `page`, and its
    /// sign-out token; else the answer to give instead (the sign-in page,
    /// or a refusal).
    fn signed_in(&self, headers: &HeaderMap, page: Nav, here: &str) -> Result<(Caller, String), Box<Response>> {
        let Some((_, caller, csrf)) = self.session(headers) else {
            return Err(Box::new(redirect(&format!("/sign-in?next={}", html::url(here)))));
        };
        if !page.allows(&caller) {
            let need: Vec<&str> = page.roles().iter().map(|r| r.as_str()).collect();
            let body = format!(
                "<p class=\"error\">This page is for the roles [{}]; you have [{}].</p>",
                esc(&need.join(", ")),
                esc(&caller.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", "))
            );
            let page = html::page("Not for your role", Some(&caller), Nav::None, &csrf, &body);
            return Err(Box::new((StatusCode::FORBIDDEN, html_response(page)).into_response()));
        }
        Ok((caller, csrf))
    }

    /// Puts a sign-in, refused sign-in or sign-out on record: refusals
    /// through the same bounds as the API's (a source repeating them cannot
    /// flood the log), the rest as they are.
    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        action: &str,
        actor: &str,
        role: &str,
        outcome: Outcome,
        code: &str,
        reason: String,
        peer: &Peer,
    ) {
        let entry = AuditEntry {
            time: std::time::SystemTime::now(),
            actor: actor.to_string(),
            role: role.to_string(),
            action: action.to_string(),
            target: String::new(),
            experiment: String::new(),
            sandbox: String::new(),
            outcome,
            code: code.to_string(),
            reason,
            source: peer.addr.to_string(),
        };
        if outcome == Outcome::Succeeded {
            self.manager.record(entry).await
        } else {
            self.manager.record_refusal(entry).await
        }
    }
}

use html::esc;

fn html_response(body: String) -> Response {
    ([(CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(LOCATION, to.to_string())]).into_response()
}

/// Where to go after signing in: a path on this site, never elsewhere.
fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n,
        _ => "/active",
    }
}

/// Every answer: not cached, not framed, no scripts, nothing sent elsewhere.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "no-referrer");
    set(h, "x-frame-options", "DENY");
    if !h.contains_key(CACHE_CONTROL) {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

fn router(dashboard: Arc<Dashboard>) -> Router {
    Router::new()
        .route("/", get(|| async { redirect("/active") }))
        .route("/sign-in", get(sign_in_form).post(sign_in))
        .route("/sign-out", axum::routing::post(sign_out))
        .route("/style.css", get(|| async { ([(CONTENT_TYPE, "text/css; charset=utf-8")], html::stylesheet()) }))
        .route("/active", get(pages::active))
        .route("/approvals", get(pages::approvals))
        .route("/register", get(pages::register))
        .route("/experiments/{id}", get(pages::experiment))
        .route("/audit", get(pages::audit))
        .route("/verification", get(pages::verification))
        .route("/exports/{file}", get(pages::export))
        .fallback(|| async {
            let body = "<p>There is no such page. <a href=\"/active\">Start again</a>.</p>";
            (StatusCode::NOT_FOUND, html_response(html::page("Not found", None, Nav::None, "", body)))
        })
        .layer(axum::middleware::map_response(security_headers))
        .with_state(dashboard)
}

#[derive(serde::Deserialize, Default)]
struct SignInQuery {
    next: Option<String>,
}

fn sign_in_page(peer: &Peer, next: &str, error: Option<&str>) -> String {
    let mut body = String::new();
    if let Some(e) = error {
        body.push_str(&format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e)));
    }
    body.push_str(
        "<p>For approvers, auditors and operators. Sign in with your Sandpit token \
         (the one the <code>sandpit</code> CLI uses).</p>",
    );
    if let Some(Ok(c)) = &peer.certificate {
        body.push_str(&format!(
            "<form method=\"post\" action=\"/sign-in\" class=\"signin\">\
             <input type=\"hidden\" name=\"method\" value=\"certificate\"><input type=\"hidden\" name=\"next\" value=\"{}\">\
             <button type=\"submit\">Continue as {} (client certificate)</button></form><p>or</p>",
            esc(next),
            esc(&c.name)
        ));
    }
    body.push_str(&format!(
        "<form method=\"post\" action=\"/sign-in\" class=\"signin\">\
         <label for=\"token\">Token<input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" required></label>\
         <input type=\"hidden\" name=\"next\" value=\"{}\"><button type=\"submit\">Sign in</button></form>",
        esc(next)
    ));
    html::page("Sign in", None, Nav::None, "", &body)
}

async fn sign_in_form(
    Extension(peer): Extension<Peer>,
    axum::extract::Query(q): axum::extract::Query<SignInQuery>,
) -> Response {
    html_response(sign_in_page(&peer, local_path(q.next.as_deref()), None))
}

#[derive(serde::Deserialize)]
struct SignInForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    method: String,
    next: Option<String>,
}

async fn sign_in(
    State(d): State<Arc<Dashboard>>,
    Extension(peer): Extension<Peer>,
    Form(form): Form<SignInForm>,
) -> Response {
    let next = local_path(form.next.as_deref()).to_string();
    let token = form.token.trim();
    let found = if form.method == "certificate" {
        match &peer.certificate {
            Some(r) => r.clone(),
            None => Err("no client certificate was presented"),
        }
    } else if token.is_empty() {
        Err("no token was given")
    } else {
        d.identities.by_token(token).cloned().ok_or("unknown token")
    };
    let caller = match found {
        Ok(c) => c,
        Err(why) => {
            sandpit_core::metrics::global().refused(SIGN_IN, sandpit_core::metrics::Refusal::Unauthenticated);
            let why = format!("dashboard sign-in: {why}");
            d.record(SIGN_IN, "anonymous", "", Outcome::Denied, "UNAUTHENTICATED", why, &peer).await;
            let page =
                sign_in_page(&peer, &next, Some("That did not sign you in: the token or certificate is not known."));
            return (StatusCode::UNAUTHORIZED, html_response(page)).into_response();
        }
    };
    let Some(role) = DASHBOARD_ROLES.into_iter().find(|r| caller.has(*r)) else {
        sandpit_core::metrics::global().refused(SIGN_IN, sandpit_core::metrics::Refusal::PermissionDenied);
        let has: Vec<&str> = caller.roles.iter().map(|r| r.as_str()).collect();
        let why =
            format!("the dashboard is for approvers, auditors and operators; {} has [{}]", caller.name, has.join(", "));
        d.record(SIGN_IN, &caller.name, "", Outcome::Denied, "PERMISSION_DENIED", why.clone(), &peer).await;
        let body = format!(
            "<p class=\"error\" role=\"alert\">Signing in was refused: {}. Use the <code>sandpit</code> CLI or the SDK.</p>",
            esc(&why)
        );
        return (StatusCode::FORBIDDEN, html_response(html::page("Not for your role", None, Nav::None, "", &body)))
            .into_response();
    };
    let Some(cookie) = d.sessions.open(caller.clone()) else {
        let body = "<p class=\"error\">Too many people are signed in; try again later.</p>";
        return (StatusCode::SERVICE_UNAVAILABLE, html_response(html::page("Busy", None, Nav::None, "", body)))
            .into_response();
    };
    let how = if form.method == "certificate" { "client certificate" } else { "token" };
    let why = format!("dashboard sign-in by {how}");
    d.record(SIGN_IN, &caller.name, role.as_str(), Outcome::Succeeded, "OK", why, &peer).await;
    tracing::info!(caller = %caller.name, source = %peer.addr, how, "dashboard sign-in");
    let mut response = redirect(&next);
    let secure = if d.secure { "; Secure" } else { "" };
    let value = format!(
        "{}={cookie}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        d.cookie_name(),
        d.sessions.ttl().as_secs()
    );
    response.headers_mut().insert(SET_COOKIE, HeaderValue::from_str(&value).expect("cookie is ascii"));
    response
}

#[derive(serde::Deserialize)]
struct SignOutForm {
    #[serde(default)]
    csrf: String,
}

async fn sign_out(
    State(d): State<Arc<Dashboard>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Form(form): Form<SignOutForm>,
) -> Response {
    if let Some((cookie, caller, csrf)) = d.session(&headers) {
        if csrf != form.csrf {
            return (StatusCode::FORBIDDEN, "the sign-out form is stale; reload the page\n").into_response();
        }
        d.sessions.close(&cookie);
        d.record(SIGN_OUT, &caller.name, "", Outcome::Succeeded, "OK", "dashboard sign-out".into(), &peer).await;
    }
    let mut response = redirect("/sign-in");
    let secure = if d.secure { "; Secure" } else { "" };
    let value = format!("{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}", d.cookie_name());
    response.headers_mut().insert(SET_COOKIE, HeaderValue::from_str(&value).expect("cookie is ascii"));
    response
}

/// Serves the dashboard on `listener` until `shutdown` resolves (over TLS
/// with `tls`), then stops accepting; connections in hand get a second.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    dashboard: Arc<Dashboard>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = router(Arc::clone(&dashboard));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => p.expect("never closed"),
            () = &mut shutdown => break,
        };
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "dashboard accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        while connections.try_join_next().is_some() {}
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let d = Arc::clone(&dashboard);
        connections.spawn(async move {
            let _permit = permit;
            let served = async {
                match acceptor {
                    None => serve_connection(tcp, Peer { addr, certificate: None }, app).await,
                    Some(acceptor) => {
                        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => return tracing::debug!(%addr, error = %e, "dashboard TLS handshake failed"),
                            Err(_) => return tracing::debug!(%addr, "dashboard TLS handshake timed out"),
                        };
                        let certificate = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| d.identities.by_certificate(c).cloned());
                        serve_connection(tls, Peer { addr, certificate }, app).await
                    }
                }
            };
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, served).await;
        });
    }
    drop(listener);
    let _ =
        tokio::time::timeout(Duration::from_secs(1), async { while connections.join_next().await.is_some() {} }).await;
    connections.abort_all();
}

async fn serve_connection<I>(io: I, peer: Peer, app: Router)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use tower::ServiceExt;
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(peer.clone());
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "dashboard connection ended");
    }
}

/// The rustls configuration for the dashboard: the daemon's certificate,
/// and client certificates verified against `client_ca` when set (optional:
/// a browser without one signs in with a token).
pub fn tls_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
) -> Result<Arc<tokio_rustls::rustls::ServerConfig>, String> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.cert: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("tls.key: {e}"))?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem) {
                roots.add(c.map_err(|e| format!("tls.client_ca: {e}"))?).map_err(|e| format!("tls.client_ca: {e}"))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("tls.client_ca: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| format!("tls: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests;
