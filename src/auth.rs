//! Who is calling: bearer tokens mapped to identities through their SHA-256
//! (config never holds a token), and what each role may do.

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

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub team: String,
    pub roles: Vec<Role>,
}

impl Caller {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Operators and auditors see every team's sandboxes; requesters their own.
    pub fn sees_all_teams(&self) -> bool {
        self.has(Role::Operator) || self.has(Role::Auditor)
    }

    /// Whether this caller may see a sandbox owned by `team`.
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
}

/// Token hashes to callers.
#[derive(Debug, Clone, Default)]
pub struct Identities {
    by_hash: HashMap<[u8; 32], Caller>,
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

impl Identities {
    pub fn from_config(ids: &[IdentityConfig]) -> Identities {
        let mut by_hash = HashMap::new();
        for id in ids {
            let mut h = [0u8; 32];
            // Config validation already checked the hex.
            if hex::decode_to_slice(id.token_sha256.to_ascii_lowercase(), &mut h).is_ok() {
                by_hash.insert(
                    h,
                    Caller {
                        name: id.name.clone(),
                        team: id.team.clone(),
                        roles: id.roles.clone(),
                    },
                );
            }
        }
        Identities { by_hash }
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    pub fn insert(&mut self, token: &str, caller: Caller) {
        self.by_hash
            .insert(Sha256::digest(token.as_bytes()).into(), caller);
    }

    /// The caller a bearer token belongs to.
    pub fn authenticate(&self, token: &str) -> Option<&Caller> {
        let h: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&h)
    }
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
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(token.as_bytes())?;
    f.write_all(b"\n")?;
    Ok(token)
}

/// The identity the local token grants: every role, in team `local`.
pub fn local_caller() -> Caller {
    Caller {
        name: "local".into(),
        team: "local".into(),
        roles: vec![
            Role::Requester,
            Role::Operator,
            Role::Approver,
            Role::Auditor,
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_through_their_hash() {
        let cfg = IdentityConfig {
            name: "alice".into(),
            team: "a".into(),
            roles: vec![Role::Requester],
            token_sha256: sha256_hex(b"secret"),
        };
        let ids = Identities::from_config(&[cfg]);
        assert_eq!(ids.authenticate("secret").unwrap().name, "alice");
        assert!(ids.authenticate("Secret").is_none());
        assert!(ids.authenticate("").is_none());
    }

    #[test]
    fn team_visibility() {
        let req = Caller {
            name: "a".into(),
            team: "a".into(),
            roles: vec![Role::Requester],
        };
        assert!(req.may_see("a") && !req.may_see("b") && req.may_use("a") && !req.may_delete("b"));
        let op = Caller {
            name: "o".into(),
            team: "ops".into(),
            roles: vec![Role::Operator],
        };
        assert!(op.may_see("b") && op.may_delete("b") && !op.may_use("b"));
        let aud = Caller {
            name: "x".into(),
            team: "alg".into(),
            roles: vec![Role::Auditor],
        };
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
        let mode = std::fs::metadata(dir.path().join("local-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
