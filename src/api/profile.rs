//! `sandpit.v1.ProfileService`: operators inspect, validate and reload profiles.

use std::path::Path;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::{Gate, Method};
use super::convert::proto_duration;
use crate::lifecycle::Manager;
use crate::policy::{Profile, ProfileError};
use crate::proto;
use crate::proto::profile_service_server::ProfileService;
use crate::Error;

/// Largest profile a caller may ask to validate.
const MAX_PROFILE_BYTES: usize = 64 * 1024;

pub struct ProfileApi {
    manager: Arc<Manager>,
    gate: Gate,
}

impl ProfileApi {
    pub fn new(manager: Arc<Manager>, gate: Gate) -> Self {
        ProfileApi { manager, gate }
    }
}

impl From<&Profile> for proto::Profile {
    fn from(p: &Profile) -> Self {
        proto::Profile {
            name: p.name.clone(),
            description: p.description.clone(),
            max_classification: p.max_classification.to_string(),
            requires_approval: p.requires_approval,
            images: p.images.clone(),
            command: p.command.clone(),
            resources: Some(proto::ProfileResources {
                cpus: p.resources.cpus,
                memory_bytes: p.resources.memory as i64,
                pids: p.resources.pids,
                tmpfs_bytes: p.resources.tmpfs as i64,
            }),
            lifetime: Some(proto::ProfileLifetime {
                default_ttl: Some(proto_duration(p.lifetime.default_ttl)),
                max_ttl: Some(proto_duration(p.lifetime.max_ttl)),
                max_lifetime: Some(proto_duration(p.lifetime.max_lifetime)),
            }),
            network: Some(proto::ProfileNetwork {
                mode: p.network.mode.as_str().to_string(),
                allow: p
                    .network
                    .allow
                    .iter()
                    .map(|d| proto::Destination {
                        host: d.host.clone(),
                        port: d.port.into(),
                        residency: d.residency.clone(),
                    })
                    .collect(),
            }),
            datasets: p.datasets.clone(),
            file_transfer: Some(proto::ProfileFileTransfer {
                copy_in: p.file_transfer.copy_in,
                copy_out: p.file_transfer.copy_out,
                max_exec_output_bytes: p.file_transfer.max_exec_output.unwrap_or(0),
            }),
            warm_pool_size: p.warm_pool,
            source: p.source.display().to_string(),
        }
    }
}

fn errors(list: &[ProfileError]) -> Vec<proto::ProfileError> {
    list.iter()
        .map(|e| proto::ProfileError {
            file: e.file.display().to_string(),
            field: e.field.clone(),
            reason: e.reason.clone(),
        })
        .collect()
}

#[tonic::async_trait]
impl ProfileService for ProfileApi {
    async fn list_profiles(
        &self,
        req: Request<proto::ListProfilesRequest>,
    ) -> Result<Response<proto::ListProfilesResponse>, Status> {
        let _call = self.gate.authorize(&req, Method::ListProfiles).await?;
        let set = self.manager.profiles();
        Ok(Response::new(proto::ListProfilesResponse { profiles: set.iter().map(Into::into).collect() }))
    }

    async fn get_profile(&self, req: Request<proto::GetProfileRequest>) -> Result<Response<proto::Profile>, Status> {
        let _call = self.gate.authorize(&req, Method::GetProfile).await?;
        let name = req.into_inner().name;
        let set = self.manager.profiles();
        let p = set.get(&name).ok_or_else(|| Error::not_found("profile", &name))?;
        Ok(Response::new(p.into()))
    }

    async fn validate_profile(
        &self,
        req: Request<proto::ValidateProfileRequest>,
    ) -> Result<Response<proto::ValidateProfileResponse>, Status> {
        let _call = self.gate.authorize(&req, Method::ValidateProfile).await?;
        let r = req.into_inner();
        if r.content.len() > MAX_PROFILE_BYTES {
            return Err(Error::invalid("content", format!("larger than {MAX_PROFILE_BYTES} bytes")).into());
        }
        let file_name = Path::new(&r.file_name);
        if r.file_name.is_empty()
            || file_name.file_name() != Some(file_name.as_os_str())
            || !r.file_name.ends_with(".toml")
        {
            return Err(Error::invalid("file_name", "must be a bare NAME.toml").into());
        }
        let result = Profile::parse_with(file_name, &r.content, &self.manager.host_rules());
        Ok(Response::new(match result {
            Ok(p) => proto::ValidateProfileResponse { valid: true, errors: vec![], profile: Some((&p).into()) },
            Err(e) => proto::ValidateProfileResponse { valid: false, errors: errors(&e), profile: None },
        }))
    }

    async fn reload_profiles(
        &self,
        req: Request<proto::ReloadProfilesRequest>,
    ) -> Result<Response<proto::ReloadProfilesResponse>, Status> {
        let caller = self.gate.authorize(&req, Method::ReloadProfiles).await?;
        let r = self.manager.reload_profiles(Some(&caller)).await;
        Ok(Response::new(proto::ReloadProfilesResponse {
            applied: r.applied,
            loaded: r.loaded,
            errors: errors(&r.errors),
        }))
    }

    async fn list_pools(
        &self,
        req: Request<proto::ListPoolsRequest>,
    ) -> Result<Response<proto::ListPoolsResponse>, Status> {
        let _call = self.gate.authorize(&req, Method::ListPools).await?;
        let pools = self
            .manager
            .pool_status()
            .await
            .into_iter()
            .map(|p| proto::PoolStatus {
                profile: p.profile,
                target: p.target,
                warm: p.warm,
                claims: p.claims,
                misses: p.misses,
            })
            .collect();
        Ok(Response::new(proto::ListPoolsResponse { pools }))
    }
}
