//! Who is calling. Callers prove who they are with a bearer token (config
//! keeps only its SHA-256) or a client certificate (its subject is mapped to
//! an identity); what each role may do is declared per RPC in
//! [`crate::api::auth`].

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::IdentityConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Requester,
    Operator,
    Approver,
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Requester => "requester",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Auditor => "auditor",
        }
    }
}

/// An authenticated caller, in the role it acts in for this call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub team: String,
    pub roles: Vec<Role>,
    /// The role that allowed this call (set by authorization).
    pub role: Option<Role>,
    /// The caller's network address.
    pub source: String,
}

impl Caller {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Operators, approvers and auditors see every team's objects; requesters their own.
    pub fn sees_all_teams(&self) -> bool {
        self.has(Role::Operator) || self.has(Role::Auditor) || self.has(Role::Approver)
    }

    /// Whether this caller may see an object of `team`.
    pub fn may_see(&self, team: &str) -> bool {
        self.sees_all_teams() || (self.has(Role::Requester) && self.team == team)
    }

    /// Whether this caller may change a sandbox of `team` (extend, exec).
    pub fn may_use(&self, team: &str) -> bool {
        self.has(Role::Requester) && self.team == team
    }

    /// Whether this caller may tear down a sandbox of `team`.
    pub fn may_delete(&self, team: &str) -> bool {
        self.has(Role::Operator) || self.may_use(team)
    }

    /// The role name for the audit log.
    pub fn role_name(&self) -> &'static str {
        self.role.map(Role::as_str).unwrap_or("")
    }
}

/// Credentials to callers.
#[derive(Debug, Clone, Default)]
pub struct Identities {
    by_hash: HashMap<[u8; 32], Caller>,
    by_subject: HashMap<String, Caller>,
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A distinguished name in one canonical form: `K=V` parts, trimmed, sorted,
/// keys upper-case, so `CN=alice, O=ONS` and `o=ONS,CN=alice` match.
pub fn normalize_subject(dn: &str) -> String {
    let mut parts: Vec<String> = dn
        .split(',')
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some(format!("{}={}", k.trim().to_ascii_uppercase(), v.trim()))
        })
        .collect();
    parts.sort();
    parts.join(",")
}

impl Identities {
    pub fn from_config(ids: &[IdentityConfig]) -> Identities {
        let mut out = Identities::default();
        for id in ids {
            let caller = Caller {
                name: id.name.clone(),
                team: id.team.clone(),
                roles: id.roles.clone(),
                role: None,
                source: String::new(),
            };
            let mut h = [0u8; 32];
            // Config validation already checked the hex.
            if let Some(hash) = &id.token_sha256 {
                if hex::decode_to_slice(hash.to_ascii_lowercase(), &mut h).is_ok() {
                    out.by_hash.insert(h, caller.clone());
                }
            }
            if let Some(subject) = &id.cert_subject {
                out.by_subject.insert(normalize_subject(subject), caller);
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty() && self.by_subject.is_empty()
    }

    pub fn insert(&mut self, token: &str, caller: Caller) {
        self.by_hash.insert(Sha256::digest(token.as_bytes()).into(), caller);
    }

    /// The caller a bearer token belongs to.
    pub fn by_token(&self, token: &str) -> Option<&Caller> {
        let h: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&h)
    }

    /// The caller a verified client certificate's subject belongs to.
    pub fn by_subject(&self, subject: &str) -> Option<&Caller> {
        self.by_subject.get(&normalize_subject(subject))
    }
}

/// The subject of a DER certificate, as `CN=alice, O=ONS`.
pub fn certificate_subject(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.subject().to_string())
}

/// Reads the local token from `data_dir`, creating it (mode 0600) if absent.
/// Used only when no identities are configured, so that a user on the same
/// machine can drive the daemon with no set-up.
pub fn local_token(data_dir: &Path) -> std::io::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let path = data_dir.join(crate::config::LOCAL_TOKEN_FILE);
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    let token = hex::encode(bytes);
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
    f.write_all(token.as_bytes())?;
    f.write_all(b"\n")?;
    Ok(token)
}

/// The identity the local token grants: every role, in team `local`.
pub fn local_caller() -> Caller {
    Caller {
        name: "local".into(),
        team: "local".into(),
        roles: vec![Role::Requester, Role::Operator, Role::Approver, Role::Auditor],
        role: None,
        source: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(team: &str, roles: &[Role]) -> Caller {
        Caller { name: "x".into(), team: team.into(), roles: roles.to_vec(), role: None, source: String::new() }
    }

    #[test]
    fn tokens_and_subjects_map_to_identities() {
        let cfg = IdentityConfig {
            name: "alice".into(),
            team: "a".into(),
            roles: vec![Role::Requester],
            token_sha256: Some(sha256_hex(b"secret")),
            cert_subject: Some("CN=alice, O=ONS".into()),
        };
        let ids = Identities::from_config(&[cfg]);
        assert_eq!(ids.by_token("secret").unwrap().name, "alice");
        assert!(ids.by_token("Secret").is_none());
        assert!(ids.by_token("").is_none());
        assert_eq!(ids.by_subject("o=ONS,CN=alice").unwrap().name, "alice");
        assert!(ids.by_subject("CN=alice").is_none());
    }

    #[test]
    fn team_visibility() {
        let req = caller("a", &[Role::Requester]);
        assert!(req.may_see("a") && !req.may_see("b") && req.may_use("a") && !req.may_delete("b"));
        let op = caller("ops", &[Role::Operator]);
        assert!(op.may_see("b") && op.may_delete("b") && !op.may_use("b"));
        let aud = caller("alg", &[Role::Auditor]);
        assert!(aud.may_see("b") && !aud.may_delete("b") && !aud.may_use("b"));
    }

    #[test]
    fn local_token_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let t1 = local_token(dir.path()).unwrap();
        let t2 = local_token(dir.path()).unwrap();
        assert_eq!(t1, t2);
        assert_eq!(t1.len(), 64);
        let mode = std::fs::metadata(dir.path().join("local-token")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
