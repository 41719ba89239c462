//! Who is calling, in what role, and what that lets it see and do. How a
//! caller is authenticated (tokens, certificate subjects) is the daemon's
//! business (`sandpitd::identity`); the core only ever sees a [`Caller`].

use serde::Deserialize;

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
    /// The governance functions an approver signs for (e.g. data-protection).
    pub functions: Vec<String>,
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

    /// Whether this caller may keep an experiment of `team`'s governance
    /// record (risks, assessments, transparency fields): its own team's
    /// requesters, and approvers.
    pub fn may_govern(&self, team: &str) -> bool {
        self.may_use(team) || self.has(Role::Approver)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(team: &str, roles: &[Role]) -> Caller {
        Caller {
            name: "x".into(),
            team: team.into(),
            roles: roles.to_vec(),
            functions: Vec::new(),
            role: None,
            source: String::new(),
        }
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
}
