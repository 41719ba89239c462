//! The Docker engine as a sandbox runtime: what a sandbox is on Docker (a
//! hardened container, a bridge network of its own and its host rules, all
//! labelled with the sandbox), built from the sandbox's record.

use async_trait::async_trait;

use crate::labels;
use crate::spec::{ContainerSpec, Isolation, Mount, NetworkRequest, Workspace};
use crate::DockerRuntime;
use sandpit_core::policy::NetworkMode;
use sandpit_core::runtime::{
    BoxStream, Capabilities, Connection, ContainerStatus, ExecSession, ExecSpec, Owned, OwnedKind, Provisioned,
    PullProgress, Repair, Runtime, RuntimeEvent, TerminalSize,
};
use sandpit_core::sandbox::{Sandbox, DATASETS_DIR};
use sandpit_core::{Error, Result};

/// The Docker name of a sandbox's container.
pub fn container_name(id: &str) -> String {
    format!("sandpit-{id}")
}

/// The Docker name of a sandbox's network, when its profile gives it one.
pub fn network_name(sb: &Sandbox) -> Option<String> {
    sb.profile.network.mode.has_network().then(|| format!("sandpit-{}", sb.id))
}

/// The Docker volume of an experiment's workspace.
pub fn workspace_name(instance: &str, experiment: &str) -> String {
    format!("sandpit-{instance}-ws-{experiment}")
}

/// The container of a sandbox: by id once provisioned, else by name.
fn container(sb: &Sandbox) -> String {
    sb.container_id.clone().unwrap_or_else(|| container_name(&sb.id))
}

impl DockerRuntime {
    /// The container (and network) a sandbox is on this engine.
    pub fn spec(&self, sb: &Sandbox) -> ContainerSpec {
        let defaults = &self.inner.sandboxes;
        let mut env = vec![format!("SANDPIT_SANDBOX_ID={}", sb.id)];
        // Warm sandboxes are nobody's until claimed (and env cannot change later).
        if !sb.experiment.is_empty() {
            env.push(format!("SANDPIT_EXPERIMENT={}", sb.experiment));
        }
        ContainerSpec {
            name: container_name(&sb.id),
            hostname: sb.id.clone(),
            image: sb.image.clone(),
            command: sb.profile.command.clone(),
            user: defaults.user.clone(),
            env,
            labels: labels::for_sandbox(sb, &self.inner.instance, &defaults.labels),
            resources: sb.profile.resources.clone(),
            network: network_name(sb).map(|name| NetworkRequest {
                name,
                internal: sb.profile.network.mode != NetworkMode::Open,
                egress: sb.profile.network.mode == NetworkMode::Allowlist,
            }),
            mounts: sb
                .datasets
                .iter()
                .map(|d| Mount { source: d.source.clone(), target: format!("{DATASETS_DIR}/{}", d.name) })
                .chain(
                    defaults
                        .helper
                        .as_ref()
                        .map(|h| Mount { source: h.clone(), target: crate::helper::PATH_IN_SANDBOX.to_string() }),
                )
                .collect(),
            isolation: sb.profile.isolation,
            runtime: self.runtime_of(sb).ok().flatten(),
            workspace: (sb.profile.workspace && !sb.experiment.is_empty()).then(|| Workspace {
                name: workspace_name(&self.inner.instance, &sb.experiment),
                labels: labels::for_workspace(sb, &self.inner.instance, &defaults.labels),
            }),
        }
    }

    /// The engine runtime a sandbox runs on: `None` for the engine's
    /// default; an error when its isolation level has none configured (it
    /// must never fall back to the default).
    fn runtime_of(&self, sb: &Sandbox) -> Result<Option<String>> {
        let (isolation, mode) = (sb.profile.isolation, sb.profile.network.mode);
        match self.inner.sandboxes.runtimes.get(isolation, mode) {
            Some("") => Ok(None),
            Some(name) => Ok(Some(name.to_string())),
            None => Err(Error::FailedPrecondition(format!(
                "no runtime is configured for isolation '{isolation}' in network mode '{}' (isolation.runtimes)",
                mode.as_str()
            ))),
        }
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn node(&self) -> &str {
        &self.inner.node
    }

    fn capabilities(&self) -> Capabilities {
        let mut confinement = vec!["seccomp".to_string()];
        if self.inner.apparmor.get().copied().unwrap_or(false) {
            confinement.push("apparmor".to_string());
        }
        let (isolation, unavailable) = self.isolation_levels();
        Capabilities {
            network_modes: vec![NetworkMode::None, NetworkMode::Isolated, NetworkMode::Allowlist, NetworkMode::Open],
            isolation,
            unavailable,
            confinement,
            workspaces: true,
        }
    }

    async fn ensure_image(&self, image: &str) -> Result<()> {
        self.image_present(image).await
    }

    fn pull_image(&self, image: &str) -> BoxStream<Result<PullProgress>> {
        self.pull(image)
    }

    async fn provision(&self, sb: &Sandbox) -> Result<Provisioned> {
        self.runtime_of(sb)?;
        self.create(&self.spec(sb)).await
    }

    async fn refresh(&self) -> Result<()> {
        self.refresh_runtimes().await
    }

    async fn destroy(&self, sb: &Sandbox) -> Result<()> {
        self.remove(&container(sb), network_name(sb).as_deref()).await?;
        self.forget_helper(&container(sb));
        Ok(())
    }

    /// Through the container's cgroup when this host lets us (no queue in
    /// the engine: what expiry needs), else through the engine.
    async fn kill(&self, sb: &Sandbox) -> Result<()> {
        let id = container(sb);
        match crate::cgroup::kill(&id).await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => tracing::debug!(container = %id, error = %e, "kill through the cgroup failed; asking the engine"),
        }
        self.kill_container(&id).await
    }

    async fn status(&self, sb: &Sandbox) -> Result<Option<ContainerStatus>> {
        self.container_status(&container(sb)).await
    }

    async fn adopt(&self, sandboxes: &[Sandbox]) -> Result<()> {
        let nets: Vec<Isolation> = sandboxes
            .iter()
            .filter_map(|sb| {
                let egress = sb.profile.network.mode == NetworkMode::Allowlist;
                sb.network.as_ref().map(|n| Isolation { subnet: n.subnet.clone(), egress })
            })
            .collect();
        if nets.is_empty() {
            return Ok(());
        }
        self.isolate(&nets).await
    }

    async fn disown(&self, sb: &Sandbox) {
        let Some(n) = &sb.network else { return };
        self.inner.firewall.disown(&n.subnet).await;
        // A repair of ours may have put the hooks back between the other
        // daemon's removal and its notice: once no network has the subnet,
        // they go (a network that took the subnet since keeps its own).
        let Some(net) = sandpit_core::egress::addr::parse_net(&n.subnet) else { return };
        match self.subnets_in_use().await {
            Ok(used) if !used.contains(&net) => {
                if let Err(e) = self.inner.firewall.forget(&[net]).await {
                    tracing::warn!(subnet = %n.subnet, error = %e, "removing the host rules of a network another daemon removed failed; the next check retries");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "cannot list networks; host rules of a removed network stay for now"),
        }
    }

    async fn owned(&self) -> Result<Vec<Owned>> {
        let selector = labels::selector(&self.inner.instance);
        let mut out: Vec<Owned> = self
            .list_containers(&selector)
            .await?
            .into_iter()
            .map(|c| Owned {
                kind: OwnedKind::Sandbox,
                id: c.id,
                sandbox_id: c.sandbox_id,
                running: c.running,
                created: c.created,
            })
            .collect();
        out.extend(self.list_networks(&selector).await?.into_iter().map(|n| Owned {
            kind: OwnedKind::Network,
            id: n.name,
            sandbox_id: n.sandbox_id,
            running: false,
            created: n.created,
        }));
        Ok(out)
    }

    async fn remove_owned(&self, o: &Owned) -> Result<()> {
        match o.kind {
            // A sandbox's container, with the network named after the sandbox if there is one.
            OwnedKind::Sandbox => {
                let network = o.sandbox_id.as_deref().map(|id| format!("sandpit-{id}"));
                self.remove(&o.id, network.as_deref()).await
            }
            OwnedKind::Network => {
                let container = o.sandbox_id.as_deref().map(container_name);
                match container {
                    Some(c) => self.remove(&c, Some(&o.id)).await,
                    None => self.remove_network_only(&o.id).await,
                }
            }
        }
    }

    async fn repair(&self) -> Result<Repair> {
        // Sandboxes are known once provisioned or adopted: only their rules are repaired.
        let r = self.repair_isolation(&[]).await?;
        Ok(Repair { changes: r.changes, restored: r.restored })
    }

    fn repair_needed(&self) -> BoxStream<()> {
        self.isolation_changes()
    }

    async fn exec(&self, sb: &Sandbox, mut spec: ExecSpec) -> Result<ExecSession> {
        let container = running(sb)?;
        // Through the helper, which marks the command's processes with the
        // tag and makes it lead a session of its own, then becomes the command.
        if let Some(tag) = spec.tag.clone() {
            if self.has_helper(&container).await? {
                let mut run = vec!["run".to_string(), tag];
                if spec.tty.is_some() {
                    run.push("--tty".into());
                }
                run.push("--".into());
                spec.command = crate::helper::command(run).into_iter().chain(spec.command).collect();
            }
        }
        if spec.stdin {
            let (mut session, input) = self.exec_in_with_stdin(&container, spec).await?;
            session.input = Some(input);
            return Ok(session);
        }
        self.exec_in(&container, spec).await
    }

    async fn exec_resize(&self, exec_id: &str, size: TerminalSize) -> Result<()> {
        self.resize_exec(exec_id, size).await
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>> {
        self.exec_code(exec_id).await
    }

    async fn exec_kill(&self, sb: &Sandbox, tag: &str) -> Result<u64> {
        let container = running(sb)?;
        if !self.has_helper(&container).await? {
            return Err(Error::FailedPrecondition(format!(
                "sandbox '{}' was made without the helper, so only its command's own process ends with the exec",
                sb.id
            )));
        }
        super::transfer::kill_tagged(self, &container, tag).await
    }

    async fn remove_workspace(&self, experiment: &str) -> Result<bool> {
        self.remove_volume(&workspace_name(&self.inner.instance, experiment)).await
    }

    async fn port_connect(&self, sb: &Sandbox, port: u16) -> Result<Connection> {
        let container = running(sb)?;
        if !self.has_helper(&container).await? {
            return Err(Error::FailedPrecondition(format!(
                "sandbox '{}' was made without the helper, which port forwarding needs: create a new one",
                sb.id
            )));
        }
        super::transfer::connect(self, &container, port).await
    }

    async fn copy_in(&self, sb: &Sandbox, dir: &str, archive: BoxStream<Result<Vec<u8>>>) -> Result<()> {
        let container = running(sb)?;
        let helper = self.has_helper(&container).await?;
        super::transfer::copy_in(self, &container, helper, dir, archive, sb.profile.resources.tmpfs).await
    }

    async fn copy_out(&self, sb: &Sandbox, path: &str) -> Result<BoxStream<Result<Vec<u8>>>> {
        let container = running(sb)?;
        let helper = self.has_helper(&container).await?;
        super::transfer::copy_out(self, &container, helper, path).await
    }

    fn events(&self) -> BoxStream<Result<RuntimeEvent>> {
        self.container_events(&labels::selector(&self.inner.instance))
    }
}

/// The container of a provisioned sandbox.
fn running(sb: &Sandbox) -> Result<String> {
    sb.container_id
        .clone()
        .ok_or_else(|| Error::FailedPrecondition(format!("sandbox '{}' has no container yet", sb.id)))
}
