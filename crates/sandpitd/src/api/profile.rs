//! `sandpit.v1.ProfileService`: operators inspect, validate and reload profiles.

use sandpit_proto::status::to_status;
use std::path::Path;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::{Gate, Method};
use crate::proto;
use crate::proto::profile_service_server::ProfileService;
use sandpit_core::lifecycle::Manager;
use sandpit_core::policy::{Profile, ProfileError};
use sandpit_core::runtime::Capabilities;
use sandpit_core::Error;

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

/// A profile as the API shows it, with whether this daemon can run it now.
fn described(p: &Profile, caps: &Capabilities) -> proto::Profile {
    proto::Profile { unavailable: caps.why_not(p.isolation).unwrap_or_default(), ..p.into() }
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
        let _call = self.gate.authorize(&req, Method::ListProfiles).await.map_err(to_status)?;
        let set = self.manager.profiles();
        let caps = self.manager.capabilities();
        Ok(Response::new(proto::ListProfilesResponse { profiles: set.iter().map(|p| described(p, &caps)).collect() }))
    }

    async fn get_profile(&self, req: Request<proto::GetProfileRequest>) -> Result<Response<proto::Profile>, Status> {
        let _call = self.gate.authorize(&req, Method::GetProfile).await.map_err(to_status)?;
        let name = req.into_inner().name;
        let set = self.manager.profiles();
        let p = set.get(&name).ok_or_else(|| Error::not_found("profile", &name)).map_err(to_status)?;
        Ok(Response::new(described(p, &self.manager.capabilities())))
    }

    async fn validate_profile(
        &self,
        req: Request<proto::ValidateProfileRequest>,
    ) -> Result<Response<proto::ValidateProfileResponse>, Status> {
        let _call = self.gate.authorize(&req, Method::ValidateProfile).await.map_err(to_status)?;
        let r = req.into_inner();
        if r.content.len() > MAX_PROFILE_BYTES {
            return Err(to_status(Error::invalid("content", format!("larger than {MAX_PROFILE_BYTES} bytes"))));
        }
        let file_name = Path::new(&r.file_name);
        if r.file_name.is_empty()
            || file_name.file_name() != Some(file_name.as_os_str())
            || !r.file_name.ends_with(".toml")
        {
            return Err(to_status(Error::invalid("file_name", "must be a bare NAME.toml")));
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
        let caller = self.gate.authorize(&req, Method::ReloadProfiles).await.map_err(to_status)?;
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
        let _call = self.gate.authorize(&req, Method::ListPools).await.map_err(to_status)?;
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
