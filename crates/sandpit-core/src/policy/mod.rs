//! Pure policy: what may be provisioned, by whom, with what limits.
//!
//! Nothing here touches Docker, the store or the network; every function is a
//! function of its arguments, so it is tested exhaustively (see the property
//! tests in [`admission`]).

pub mod admission;
pub mod classification;
pub mod profile;
pub mod size;

pub use admission::Dataset;
pub use admission::{admit, extend_deadline, CreateSandbox, HostPolicy, Plan, ResourceRequest, Rule};
pub use classification::Classification;
pub use profile::{
    Destination, FileTransfer, HostRules, Isolation, Lifetime, MinimumIsolation, Network, NetworkMode, Profile,
    ProfileError, ProfileSet, Resources,
};
