//! The sandbox record: what the daemon knows about one sandbox, persisted in
//! the store and rebuilt from Docker labels on reconcile.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::policy::{Classification, Plan, Profile};
use crate::runtime::NetworkInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    /// Record written; container being created and started.
    Provisioning,
    /// Pre-provisioned in a profile's warm pool, owned by no one until claimed.
    Warm,
    Running,
    /// The main process ended before expiry; the stopped container is kept until expiry or delete.
    Exited,
    Expired,
    Deleted,
    Failed,
    /// The container vanished from Docker without the daemon removing it.
    Lost,
}

impl SandboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Provisioning => "provisioning",
            SandboxState::Warm => "warm",
            SandboxState::Running => "running",
            SandboxState::Exited => "exited",
            SandboxState::Expired => "expired",
            SandboxState::Deleted => "deleted",
            SandboxState::Failed => "failed",
            SandboxState::Lost => "lost",
        }
    }

    /// Ended sandboxes own nothing in Docker and never change again.
    pub fn is_ended(self) -> bool {
        matches!(self, SandboxState::Expired | SandboxState::Deleted | SandboxState::Failed | SandboxState::Lost)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sandbox {
    pub id: String,
    pub experiment: String,
    pub owner: String,
    pub team: String,
    /// The profile as it was when the sandbox was created.
    pub profile: Profile,
    pub classification: Classification,
    pub image: String,
    pub state: SandboxState,
    /// Why it is in its state: failure cause, exit status, who deleted it.
    pub state_reason: String,
    pub created_at: SystemTime,
    pub expires_at: SystemTime,
    pub max_expires_at: SystemTime,
    pub ended_at: Option<SystemTime>,
    pub container_id: Option<String>,
    /// The engine the sandbox runs on.
    pub node: String,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    /// Its own network, for every mode but `none`.
    #[serde(default)]
    pub network: Option<NetworkInfo>,
    /// Datasets mounted read-only at `/data/<name>`.
    #[serde(default)]
    pub datasets: Vec<DatasetMount>,
    /// The store's version of this record: an update is written only if the
    /// record is still at it (compare-and-set). 0 until first stored.
    #[serde(default)]
    pub version: u64,
}

/// A dataset mounted into a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetMount {
    pub name: String,
    pub source: std::path::PathBuf,
}

/// Where an experiment's workspace appears inside its sandboxes.
pub const WORKSPACE_DIR: &str = "/workspace";

/// Where datasets appear inside a sandbox.
pub const DATASETS_DIR: &str = "/data";

impl Sandbox {
    /// A new record in `provisioning`, from an admitted plan.
    pub fn provisioning(id: String, node: String, plan: Plan) -> Sandbox {
        Sandbox {
            id,
            experiment: plan.experiment,
            owner: plan.owner,
            team: plan.team,
            // The sandbox's own copy of its profile, with the resources it got.
            profile: crate::policy::Profile { resources: plan.resources, ..plan.profile },
            classification: plan.classification,
            image: plan.image,
            state: SandboxState::Provisioning,
            state_reason: String::new(),
            created_at: plan.created_at,
            expires_at: plan.expires_at,
            max_expires_at: plan.max_expires_at,
            ended_at: None,
            container_id: None,
            node,
            exit_code: None,
            oom_killed: false,
            network: None,
            datasets: plan.datasets,
            version: 0,
        }
    }

    /// The name of its network, when its profile gives it one.
    pub fn network_name(&self) -> Option<String> {
        self.profile.network.mode.has_network().then(|| format!("sandpit-{}", self.id))
    }

    /// A new sandbox id: `sb-` and 12 random hex digits.
    pub fn new_id() -> String {
        random_id::<6>("sb")
    }

    /// Moves to an ended state, once.
    pub fn end(&mut self, state: SandboxState, reason: impl Into<String>, at: SystemTime) {
        debug_assert!(state.is_ended());
        self.state = state;
        self.state_reason = reason.into();
        self.ended_at.get_or_insert(at);
    }
}

/// A new random id: `prefix`, a dash and `N` random bytes in hex.
pub(crate) fn random_id<const N: usize>(prefix: &str) -> String {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the OS random source is available");
    format!("{prefix}-{}", hex::encode(b))
}

/// Something that happened to a sandbox, for watchers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Created,
    Extended,
    ExpiringSoon,
    Expired,
    Deleted,
    Exited,
    Failed,
    Lost,
    Adopted,
}

impl EventKind {
    /// Whether the sandbox stopped running with it.
    pub fn is_end(self) -> bool {
        matches!(
            self,
            EventKind::Expired | EventKind::Deleted | EventKind::Exited | EventKind::Failed | EventKind::Lost
        )
    }
}

#[derive(Debug, Clone)]
pub struct SandboxEvent {
    pub kind: EventKind,
    pub time: SystemTime,
    pub sandbox: Sandbox,
    pub message: String,
}
