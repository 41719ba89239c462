//! The manager's logic against [`MemoryStore`] and [`FakeRuntime`]: no
//! Docker, no SQLite, each test in milliseconds of real time.
//!
//! Time: tests run on a paused tokio clock (`start_paused`), so the fake's
//! delays, the manager's retry backoff and every poll below take no real
//! time and happen in one order. The manager's deadlines, though, are wall
//! clock (`SystemTime`): the scheduler sleeps on the tokio clock until
//! [`crate::time::instant_at`] of a deadline but then only hands over what
//! `SystemTime::now()` says is due, and the expiry checks compare with
//! `SystemTime::now()` too. A paused clock cannot move those, so tests of
//! expiry give sandboxes a real ttl of a few tens of milliseconds and let it
//! pass with a blocking `std::thread::sleep` before the scheduler's tokio
//! timer comes due; from there on the paused clock drives everything.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;

use super::reconcile::{judge_object, judge_sandbox, ObjectAction, SandboxAction};
use crate::audit::{action, AuditRecord, Outcome};
use crate::auth::{Caller, Role};
use crate::lifecycle::{CopyOut, ExecOutput, Manager, ReconcileReport, Settings};
use crate::policy::admission::TeamQuotas;
use crate::policy::{Classification, CreateSandbox, HostPolicy, HostRules, Profile, ProfileSet, Rule};
use crate::register::{Decision, NewExperiment};
use crate::runtime::fake::{ExecScript, FakeRuntime, Fault, Op};
use crate::runtime::{ExecChunk, ExecSpec, Owned, OwnedKind};
use crate::sandbox::{EventKind, Sandbox, SandboxState};
use crate::store::memory::MemoryStore;
use crate::store::{AuditQuery, ListFilter, Store, Versioned};
use crate::Error;

const GRACE: Duration = Duration::from_secs(60);

/// A profile `name` with `warm_pool` and lifetimes `default_ttl`, `max_ttl`, `max_lifetime`.
fn profile(name: &str, warm_pool: u32, lifetime: [&str; 3]) -> Profile {
    let [default_ttl, max_ttl, max_lifetime] = lifetime;
    let toml = format!(
        "max_classification = \"OFFICIAL\"\nimages = [\"img:1\", \"img:2\"]\ncommand = [\"sleep\", \"infinity\"]\n\
         warm_pool = {warm_pool}\nnetwork = {{ mode = \"isolated\" }}\n\
         [lifetime]\ndefault_ttl = \"{default_ttl}\"\nmax_ttl = \"{max_ttl}\"\nmax_lifetime = \"{max_lifetime}\"\n"
    );
    Profile::parse(Path::new(&format!("{name}.toml")), &toml).unwrap()
}

/// `std`: 10 minutes, up to an hour, never past an hour from creation.
fn standard() -> Profile {
    profile("std", 0, ["10m", "1h", "1h"])
}

/// `short`: expires 30ms after creation (wall clock), extensible.
fn short() -> Profile {
    profile("short", 0, ["30ms", "1h", "2h"])
}

/// How long to block so that a `short` sandbox's deadline has passed.
const PAST_SHORT: Duration = Duration::from_millis(40);

fn settings() -> Settings {
    Settings {
        host: HostPolicy {
            max_classification: Classification::Official,
            datasets: vec![],
            min_ttl: Duration::ZERO,
            minimum_isolation: Default::default(),
            refuse_overdue_risk: None,
            dpia_required: None,
        },
        governance: Default::default(),
        expiry_warning: Duration::ZERO,
        reconcile_interval: Duration::from_secs(3600),
        orphan_grace: GRACE,
        exec_timeout: Duration::from_secs(60),
        profiles_dir: PathBuf::from("/nonexistent/sandpit-unit-test-profiles"),
        host_rules: HostRules::default(),
        quotas: TeamQuotas { default: 100, teams: Default::default() },
        refusals: crate::audit::refusals::RefusalLimits { window: Duration::from_secs(60), per_source: 1000 },
    }
}

struct Rig {
    manager: Arc<Manager>,
    runtime: Arc<FakeRuntime>,
    store: Arc<MemoryStore>,
    caller: Caller,
    experiment: String,
}

impl Rig {
    /// A manager as `server::run` builds one, on a fake runtime and a memory store, not started.
    async fn new(profiles: impl IntoIterator<Item = Profile>) -> Rig {
        let runtime = Arc::new(FakeRuntime::new());
        let store = Arc::new(MemoryStore::new());
        let manager = Manager::new(
            Arc::clone(&runtime) as Arc<dyn crate::runtime::Runtime>,
            Arc::clone(&store) as Arc<dyn Store>,
            ProfileSet::from_profiles(profiles),
            settings(),
        )
        .await
        .unwrap();
        let caller = Caller {
            name: "alice".into(),
            team: "t".into(),
            roles: vec![Role::Requester],
            role: Some(Role::Requester),
            source: "127.0.0.1:4000".into(),
            functions: Vec::new(),
        };
        let new = NewExperiment {
            title: "unit".into(),
            purpose: "tests".into(),
            ai_tools: vec![],
            models: vec![],
            classification: Classification::Official,
            datasets: vec![],
            risks: vec![],
            planned_end: None,
            senior_responsible_owner: String::new(),
            phase: String::new(),
            function: String::new(),
            region: String::new(),
        };
        // Registered through the manager, as a requester does: OFFICIAL needs no approval.
        let experiment = manager.register_experiment(&caller, new).await.unwrap().id;
        Rig { manager, runtime, store, caller, experiment }
    }

    /// Another manager on the same store and runtime: the daemon after a restart.
    async fn restarted(&self) -> Arc<Manager> {
        Manager::new(
            Arc::clone(&self.runtime) as Arc<dyn crate::runtime::Runtime>,
            Arc::clone(&self.store) as Arc<dyn Store>,
            (*self.manager.profiles()).clone(),
            settings(),
        )
        .await
        .unwrap()
    }

    fn request(&self, profile: &str) -> CreateSandbox {
        CreateSandbox {
            experiment: self.experiment.clone(),
            profile: profile.into(),
            classification: Classification::Official,
            ttl: None,
            image: None,
            datasets: vec![],
            resources: Default::default(),
        }
    }

    /// A create, and a moment for its provisioning task to finish after
    /// handing the sandbox over (until then reconcile leaves the sandbox be).
    async fn create(&self, profile: &str) -> crate::Result<Sandbox> {
        let created = self.manager.create(&self.caller, self.request(profile)).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        created
    }

    async fn record(&self, id: &str) -> Sandbox {
        self.store.get(id).await.unwrap().unwrap()
    }

    /// Every sandbox on record, ended ones too.
    async fn records(&self) -> Vec<Sandbox> {
        self.store.list(&ListFilter { include_ended: true, ..Default::default() }).await.unwrap()
    }

    /// The audit records of `action`, oldest first.
    async fn audit(&self, act: &str) -> Vec<AuditRecord> {
        let q = AuditQuery { action: Some(act.into()), limit: 1000, ..Default::default() };
        self.store.query_audit(&q).await.unwrap().records
    }

    /// A record as admission makes it for this rig's experiment, in `provisioning`, not stored.
    fn provisioning_record(&self, profile: &Profile) -> Sandbox {
        let plan = crate::policy::Plan { experiment: self.experiment.clone(), ..plan_for(profile) };
        Sandbox::provisioning(Sandbox::new_id(), "fake".into(), plan)
    }

    async fn shutdown(&self) {
        assert!(self.manager.shutdown(Duration::from_secs(5)).await, "every task of the manager ended");
    }
}

/// Polls `check` every 5ms of tokio time (none of it real on a paused clock) until it holds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn object(kind: OwnedKind, id: &str, sandbox: Option<&str>, running: bool, age: Duration) -> Owned {
    object_at(kind, id, sandbox, running, SystemTime::now() - age)
}

fn object_at(kind: OwnedKind, id: &str, sandbox: Option<&str>, running: bool, created: SystemTime) -> Owned {
    Owned { kind, id: id.into(), sandbox_id: sandbox.map(String::from), running, created }
}

// ---- create ---------------------------------------------------------------

/// A create ends with the sandbox running: one `CreateSandbox` record that
/// succeeded, a `Created` event, and the record naming the container the
/// runtime runs (and its network).
#[tokio::test(start_paused = true)]
async fn create_runs_the_sandbox_audits_it_once_and_record_and_runtime_agree() {
    let rig = Rig::new([standard()]).await;
    let mut events = rig.manager.watch(&rig.caller, None, None);
    let sb = rig.create("std").await.unwrap();
    assert_eq!(sb.state, SandboxState::Running);
    assert_eq!(rig.record(&sb.id).await, sb, "what the caller got is what is on record");
    assert_eq!(sb.version, 2, "inserted in provisioning, then written running");

    let objects = rig.runtime.objects_of(&sb.id);
    let container = objects.iter().find(|o| o.kind == OwnedKind::Sandbox).unwrap();
    assert_eq!(Some(&container.id), sb.container_id.as_ref());
    assert!(container.running && rig.runtime.is_running(&sb.id));
    let network = objects.iter().find(|o| o.kind == OwnedKind::Network).unwrap();
    assert_eq!(Some(&network.id), sb.network.as_ref().map(|n| &n.name));
    assert_eq!(rig.runtime.calls(Op::Provision), 1);

    let created = rig.audit(action::CREATE_SANDBOX).await;
    assert_eq!(created.len(), 1);
    let e = &created[0].entry;
    assert_eq!((e.outcome, e.sandbox.as_str(), e.actor.as_str()), (Outcome::Succeeded, sb.id.as_str(), "alice"));
    assert!(e.reason.starts_with("std OFFICIAL img:1 until "), "{}", e.reason);
    let ev = events.next().await.unwrap();
    assert_eq!((ev.kind, ev.sandbox.id), (EventKind::Created, sb.id.clone()));
    assert!(rig.store.verify_audit().await.unwrap().ok);
    rig.shutdown().await;
}

/// The client hangs up while its sandbox is being provisioned: the
/// provisioning task finishes, finds nobody to hand the sandbox to, and tears
/// it down: `failed`, "abandoned", an `abandon` record, nothing left running.
/// A profile whose isolation level the runtime cannot give is refused by
/// rule before anything is recorded or provisioned (never run at a weaker
/// level), its warm pool waits without holding up others, and ListProfiles'
/// source (the capabilities) says why; it runs again once the level is back.
#[tokio::test(start_paused = true)]
async fn a_profile_whose_isolation_is_unavailable_is_refused_by_rule_never_downgraded() {
    let mut gvisor = profile("gv", 2, ["10m", "1h", "1h"]);
    gvisor.isolation = crate::policy::Isolation::Gvisor;
    let pooled = profile("pooled", 1, ["10m", "1h", "1h"]);
    let rig = Rig::new([gvisor, pooled]).await;
    rig.runtime.lose_isolation(crate::policy::Isolation::Gvisor, "the Docker engine has no runtime 'runsc-none'");
    rig.manager.start().await.unwrap();
    let e = rig.create("gv").await.unwrap_err();
    assert!(matches!(e, Error::Denied { rule: Rule::IsolationAvailable, .. }), "{e}");
    assert_eq!(e.code(), crate::error::Code::FailedPrecondition);
    assert!(e.to_string().contains("needs isolation 'gvisor'") && e.to_string().contains("runsc-none"), "{e}");
    assert!(rig.records().await.iter().all(|sb| sb.profile.name == "pooled"), "nothing of gv was recorded");
    let refusals = rig.audit(action::CREATE_SANDBOX).await;
    assert!(refusals.iter().any(|r| r.entry.reason.contains("isolation-available")), "the refusal is audited");
    // The other profile's pool fills although gv's cannot.
    eventually("the pooled profile's warm pool filled", || async {
        rig.records().await.iter().any(|sb| sb.profile.name == "pooled" && sb.state == SandboxState::Warm)
    })
    .await;
    let why = rig.manager.capabilities().why_not(crate::policy::Isolation::Gvisor).unwrap();
    assert!(why.contains("runsc-none"), "{why}");
    rig.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_create_is_torn_down_failed_and_audited() {
    let rig = Rig::new([standard()]).await;
    rig.runtime.delay(Op::Provision, Duration::from_millis(200));
    let create = rig.manager.create(&rig.caller, rig.request("std"));
    assert!(tokio::time::timeout(Duration::from_millis(50), create).await.is_err(), "the client gave up first");
    assert_eq!(rig.runtime.calls(Op::Provision), 1, "provisioning had started");

    eventually("the abandoned sandbox has ended", || async {
        rig.records().await.first().is_some_and(|s| s.state.is_ended())
    })
    .await;
    let sb = rig.records().await.remove(0);
    assert_eq!(sb.state, SandboxState::Failed);
    assert!(sb.state_reason.contains("abandoned"), "{}", sb.state_reason);
    assert!(rig.runtime.objects().is_empty(), "its container and network are gone: {:?}", rig.runtime.objects());
    let abandon = rig.audit(action::ABANDON).await;
    assert_eq!(abandon.len(), 1);
    assert_eq!((abandon[0].entry.sandbox.as_str(), abandon[0].entry.outcome), (sb.id.as_str(), Outcome::Succeeded));
    rig.shutdown().await;
}

/// A provision the engine refuses: the create fails with the engine's error,
/// the record says `failed` with it, the create is audited as failed, and
/// what the engine made before failing is removed.
#[tokio::test(start_paused = true)]
async fn a_failed_provision_is_recorded_failed_and_leaves_nothing() {
    let rig = Rig::new([standard()]).await;
    rig.runtime.fail_next(Op::Provision, 1, Fault::Docker);
    rig.runtime.leave_debris_on_failed_provision(true);
    let e = rig.create("std").await.unwrap_err();
    assert!(matches!(e, Error::Docker { op: "create container", .. }), "{e:?}");
    let sb = rig.records().await.remove(0);
    assert_eq!(sb.state, SandboxState::Failed);
    assert!(sb.state_reason.contains("injected"), "{}", sb.state_reason);
    assert!(rig.runtime.objects().is_empty(), "{:?}", rig.runtime.objects());
    let created = rig.audit(action::CREATE_SANDBOX).await;
    assert_eq!(created.len(), 1);
    assert_eq!((created[0].entry.outcome, created[0].entry.code.as_str()), (Outcome::Failed, "INTERNAL"));
    rig.shutdown().await;
}

/// As above, and the engine also refuses the first removal of the debris:
/// the failure is reported at once and the removal retried in the background.
#[tokio::test(start_paused = true)]
async fn a_failed_create_whose_cleanup_is_refused_is_cleaned_up_in_the_background() {
    let rig = Rig::new([standard()]).await;
    rig.runtime.fail_next(Op::Provision, 1, Fault::Docker);
    rig.runtime.fail_next(Op::Destroy, 2, Fault::Docker);
    rig.runtime.leave_debris_on_failed_provision(true);
    assert!(rig.create("std").await.is_err());
    assert_eq!(rig.records().await[0].state, SandboxState::Failed, "recorded at once");
    assert!(!rig.runtime.objects().is_empty(), "the debris is still there");
    eventually("the debris is removed", || async { rig.runtime.objects().is_empty() }).await;
    assert_eq!(rig.runtime.calls(Op::Destroy), 3);
    rig.shutdown().await;
}

// ---- warm pools -----------------------------------------------------------

/// A profile with `warm_pool = 2`: the pool fills in the background; a create
/// claims a warm sandbox without provisioning anything; the pool refills; the
/// claimed sandbox never goes back to it, even once deleted.
#[tokio::test(start_paused = true)]
async fn a_warm_pool_fills_and_a_create_claims_without_provisioning() {
    let rig = Rig::new([profile("pooled", 2, ["10m", "1h", "1h"])]).await;
    rig.manager.start().await.unwrap();
    let warm_ids =
        || async { rig.manager.warm_sandboxes().await.unwrap().into_iter().map(|s| s.id).collect::<Vec<_>>() };
    eventually("the pool holds 2", || async { warm_ids().await.len() == 2 }).await;
    assert_eq!(rig.runtime.calls(Op::Provision), 2);
    let before = warm_ids().await;
    assert_eq!(rig.audit(action::POOL_FILL).await.len(), 2);

    let sb = rig.manager.create(&rig.caller, rig.request("pooled")).await.unwrap();
    assert_eq!(rig.runtime.calls(Op::Provision), 2, "a claim provisions nothing");
    assert!(before.contains(&sb.id), "one of the warm ones");
    assert_eq!(
        (sb.state, sb.experiment.as_str(), sb.owner.as_str()),
        (SandboxState::Running, &*rig.experiment, "alice")
    );
    assert!(rig.runtime.is_running(&sb.id));
    let created = rig.audit(action::CREATE_SANDBOX).await;
    assert_eq!(created.len(), 1);
    assert!(created[0].entry.reason.contains("claimed from the warm pool"), "{}", created[0].entry.reason);

    eventually("the pool is refilled", || async { warm_ids().await.len() == 2 }).await;
    assert_eq!(rig.runtime.calls(Op::Provision), 3);
    assert!(!warm_ids().await.contains(&sb.id), "the claimed one is not in the pool");
    let status = rig.manager.pool_status().await;
    assert_eq!((status[0].warm, status[0].claims, status[0].misses), (2, 1, 0));

    rig.manager.delete(&rig.caller, &sb.id).await.unwrap();
    let second = rig.create("pooled").await.unwrap();
    assert_ne!(second.id, sb.id, "a second claim gets another sandbox");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!warm_ids().await.contains(&sb.id) && !warm_ids().await.contains(&second.id));
    assert_eq!(rig.record(&sb.id).await.state, SandboxState::Deleted);
    rig.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_claim_rereads_a_warm_record_changed_since_it_was_pooled_and_skips_one_that_ended() {
    let rig = Rig::new([profile("pooled", 1, ["10m", "1h", "1h"])]).await;
    rig.manager.start().await.unwrap();
    let warm = || async { rig.manager.warm_sandboxes().await.unwrap() };
    eventually("the pool holds 1", || async { warm().await.len() == 1 }).await;

    // Written again behind the pool (as adoption would): still warm, a newer version.
    let first = warm().await.remove(0);
    assert!(matches!(rig.store.update_sandbox(&first, None).await.unwrap(), Versioned::Written(_)));
    let sb = rig.manager.create(&rig.caller, rig.request("pooled")).await.unwrap();
    assert_eq!(sb.id, first.id, "claimed after reading it again");
    assert_eq!(rig.record(&sb.id).await.state, SandboxState::Running);
    assert_eq!(rig.runtime.calls(Op::Provision), 1);

    // Ended behind the pool: no claim, a cold create instead.
    eventually("the pool is refilled", || async { warm().await.len() == 1 }).await;
    let mut second = warm().await.remove(0);
    second.state = SandboxState::Exited;
    assert!(matches!(rig.store.update_sandbox(&second, None).await.unwrap(), Versioned::Written(_)));
    let cold = rig.manager.create(&rig.caller, rig.request("pooled")).await.unwrap();
    assert_ne!(cold.id, second.id);
    assert_eq!(rig.record(&second.id).await.state, SandboxState::Exited, "never claimed");
    let status = rig.manager.pool_status().await;
    assert_eq!((status[0].claims, status[0].misses), (1, 1));
    rig.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_create_that_loses_a_race_with_a_rejection_is_admitted_again_and_refused() {
    let rig = Rig::new([profile("pooled", 1, ["10m", "1h", "1h"])]).await;
    rig.manager.start().await.unwrap();
    let warm = || async { rig.manager.warm_sandboxes().await.unwrap() };
    eventually("the pool holds 1", || async { warm().await.len() == 1 }).await;
    let pooled = warm().await.remove(0);

    // The create is admitted, then waits for the warm sandbox...
    let held = rig.manager.locks.lock(&pooled.id).await;
    let create = {
        let (manager, caller, request) = (Arc::clone(&rig.manager), rig.caller.clone(), rig.request("pooled"));
        tokio::spawn(async move { manager.create(&caller, request).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!create.is_finished());
    // ...while an approver rejects its experiment, which waits for no create.
    let approver = Caller {
        name: "bob".into(),
        team: "gov".into(),
        roles: vec![Role::Approver],
        role: Some(Role::Approver),
        source: "127.0.0.1:4001".into(),
        functions: Vec::new(),
    };
    rig.manager.decide_experiment(&approver, &rig.experiment, Decision::Rejected, "", String::new()).await.unwrap();
    drop(held);

    // The claim finds the experiment changed, admission runs again and refuses.
    let refused = create.await.unwrap().unwrap_err();
    assert!(refused.to_string().contains("rejected"), "{refused}");
    let live = ListFilter { experiment: Some(rig.experiment.clone()), ..Default::default() };
    assert!(rig.store.list(&live).await.unwrap().is_empty(), "nothing lives for a rejected experiment");
    assert_eq!(rig.record(&pooled.id).await.state, SandboxState::Warm, "back in the pool, unclaimed");
    assert_eq!(rig.runtime.calls(Op::Provision), 1);
    rig.shutdown().await;
}

// ---- reconcile: the pure decisions ------------------------------------------

fn record_in(state: SandboxState) -> Sandbox {
    let mut sb = Sandbox::provisioning("sb-1".into(), "fake".into(), plan_for(&standard()));
    sb.state = state;
    sb.container_id = Some("fake-000001".into());
    sb
}

fn plan_for(p: &Profile) -> crate::policy::Plan {
    let now = SystemTime::now();
    crate::policy::Plan {
        experiment: "exp-1".into(),
        owner: "alice".into(),
        team: "t".into(),
        profile: p.clone(),
        classification: Classification::Official,
        image: p.default_image().into(),
        datasets: vec![],
        created_at: now,
        expires_at: now + p.lifetime.default_ttl,
        max_expires_at: now + p.lifetime.max_lifetime,
        resources: p.resources.clone(),
    }
}

/// Every case of `judge_object`: a live sandbox's object is kept for its
/// record to decide; an ended sandbox's is a leftover; an object with no
/// record is an orphan only once older than the grace period and not being
/// created here; a network naming no sandbox is never touched.
#[test]
fn judge_object_covers_every_case() {
    let now = SystemTime::now();
    let old = GRACE * 2;
    let ctr = |sandbox: Option<&str>, age| object_at(OwnedKind::Sandbox, "c", sandbox, true, now - age);
    let net = |sandbox: Option<&str>, age| object_at(OwnedKind::Network, "n", sandbox, false, now - age);
    let live = record_in(SandboxState::Running);
    let ended = record_in(SandboxState::Expired);
    let at = |o: &Owned, r: Option<&Sandbox>, creating| judge_object(o, r, creating, GRACE, now);

    for state in [SandboxState::Provisioning, SandboxState::Warm, SandboxState::Running, SandboxState::Exited] {
        let r = record_in(state);
        assert_eq!(at(&ctr(Some("sb-1"), old), Some(&r), false), ObjectAction::Live, "{state:?}");
        assert_eq!(at(&net(Some("sb-1"), Duration::ZERO), Some(&r), false), ObjectAction::Live, "{state:?}");
    }
    for state in [SandboxState::Expired, SandboxState::Deleted, SandboxState::Failed, SandboxState::Lost] {
        let r = record_in(state);
        assert_eq!(at(&ctr(Some("sb-1"), Duration::ZERO), Some(&r), false), ObjectAction::RemoveLeftover);
        assert_eq!(at(&net(Some("sb-1"), old), Some(&r), true), ObjectAction::RemoveLeftover, "creating or not");
    }
    // A record with an object that names no sandbox cannot be looked up; as written, it is a leftover.
    assert_eq!(at(&ctr(None, old), Some(&live), false), ObjectAction::RemoveLeftover);
    assert_eq!(at(&ctr(None, old), Some(&ended), false), ObjectAction::RemoveLeftover);
    // No record.
    assert_eq!(at(&net(None, old), None, false), ObjectAction::Leave, "a network that names no sandbox");
    assert_eq!(at(&ctr(Some("sb-x"), old), None, true), ObjectAction::Leave, "its create is in flight");
    assert_eq!(at(&net(Some("sb-x"), old), None, true), ObjectAction::Leave, "its create is in flight");
    assert_eq!(at(&ctr(Some("sb-x"), GRACE / 2), None, false), ObjectAction::Leave, "younger than the grace");
    assert_eq!(at(&net(Some("sb-x"), GRACE / 2), None, false), ObjectAction::Leave, "younger than the grace");
    let future = Owned { created: now + GRACE * 10, ..ctr(Some("sb-x"), Duration::ZERO) };
    assert_eq!(at(&future, None, false), ObjectAction::Leave, "made 'in the future' (clock skew): young");
    assert_eq!(at(&ctr(Some("sb-x"), GRACE), None, false), ObjectAction::RemoveOrphan, "exactly the grace");
    assert_eq!(at(&ctr(Some("sb-x"), old), None, false), ObjectAction::RemoveOrphan);
    assert_eq!(at(&net(Some("sb-x"), old), None, false), ObjectAction::RemoveOrphan);
    assert_eq!(at(&ctr(None, old), None, false), ObjectAction::RemoveOrphan, "a container naming no sandbox");
}

/// Every case of `judge_sandbox`: a record still provisioning was cut short
/// (whatever exists); a live record without its object is lost; a running
/// or warm one whose main process stopped exited; the rest are kept.
#[test]
fn judge_sandbox_covers_every_case() {
    let running = object(OwnedKind::Sandbox, "c", Some("sb-1"), true, Duration::ZERO);
    let stopped = object(OwnedKind::Sandbox, "c", Some("sb-1"), false, Duration::ZERO);
    let judge = |state, o: Option<&Owned>| judge_sandbox(&record_in(state), o);
    for o in [None, Some(&running), Some(&stopped)] {
        assert_eq!(judge(SandboxState::Provisioning, o), SandboxAction::FailInterrupted, "{o:?}");
    }
    for state in [SandboxState::Warm, SandboxState::Running, SandboxState::Exited] {
        assert_eq!(judge(state, None), SandboxAction::MarkLost, "{state:?}");
        assert_eq!(judge(state, Some(&running)), SandboxAction::Keep, "{state:?}");
    }
    assert_eq!(judge(SandboxState::Running, Some(&stopped)), SandboxAction::RecordExit);
    assert_eq!(judge(SandboxState::Warm, Some(&stopped)), SandboxAction::RecordExit);
    assert_eq!(judge(SandboxState::Exited, Some(&stopped)), SandboxAction::Keep, "its exit is on record already");
}

// ---- reconcile: through the manager -----------------------------------------

/// Objects: an orphan older than the grace period is removed (its container
/// and its network, each an object of its own), a young one and a network
/// naming no sandbox are left, the leftover of an ended record is removed;
/// each removal audited. A second pass finds nothing more to do.
#[tokio::test(start_paused = true)]
async fn reconcile_removes_old_orphans_and_leftovers_and_leaves_young_ones() {
    let rig = Rig::new([standard()]).await;
    let old = GRACE * 2;
    rig.runtime.plant(object(OwnedKind::Sandbox, "ctr-orphan", Some("sb-orphan"), true, old));
    rig.runtime.plant(object(OwnedKind::Network, "sandpit-sb-orphan", Some("sb-orphan"), false, old));
    rig.runtime.plant(object(OwnedKind::Sandbox, "ctr-young", Some("sb-young"), true, GRACE / 2));
    rig.runtime.plant(object(OwnedKind::Network, "someone-elses", None, false, old));
    let ended = rig.create("std").await.unwrap();
    rig.manager.delete(&rig.caller, &ended.id).await.unwrap();
    // A teardown cut short: the record ended, its container survived.
    rig.runtime.plant(object(OwnedKind::Sandbox, "ctr-leftover", Some(&ended.id), false, Duration::ZERO));

    let report = rig.manager.reconcile().await.unwrap();
    assert_eq!(report, ReconcileReport { orphans_removed: 2, leftovers_removed: 1, ..Default::default() });
    let left: Vec<String> = rig.runtime.objects().into_iter().map(|o| o.id).collect();
    assert_eq!(left, ["ctr-young", "someone-elses"]);
    let orphans: Vec<(String, String)> =
        rig.audit(action::REMOVE_ORPHAN).await.into_iter().map(|r| (r.entry.sandbox, r.entry.reason)).collect();
    assert_eq!(orphans.len(), 2);
    assert!(orphans.iter().all(|(sb, _)| sb == "sb-orphan"));
    assert!(orphans[0].1.contains("ctr-orphan") && orphans[1].1.contains("sandpit-sb-orphan"), "{orphans:?}");
    let leftover = rig.audit(action::REMOVE_LEFTOVER).await;
    assert_eq!((leftover.len(), leftover[0].entry.sandbox.as_str()), (1, ended.id.as_str()));
    assert_eq!(rig.manager.reconcile().await.unwrap(), ReconcileReport::default());
    rig.shutdown().await;
}

/// Records: a create the daemon died in the middle of is failed (and what
/// it made removed); a sandbox whose container vanished is `lost`; one whose
/// main process ended unseen is `exited` with its code; a running one is
/// kept as it is (and, made by this process, not adopted). Each audited once;
/// a second pass does nothing.
#[tokio::test(start_paused = true)]
async fn reconcile_fails_interrupted_creates_marks_lost_records_exits_and_keeps_the_live() {
    let rig = Rig::new([standard()]).await;
    // What a daemon killed during provisioning leaves: a record, half a sandbox.
    let interrupted = rig.provisioning_record(&standard());
    rig.store.insert_sandbox(&interrupted, None).await.unwrap();
    rig.runtime.plant(object(OwnedKind::Sandbox, "ctr-half", Some(&interrupted.id), false, Duration::ZERO));
    let lost = rig.create("std").await.unwrap();
    rig.runtime.vanish(&lost.id);
    let exited = rig.create("std").await.unwrap();
    rig.runtime.exit_main_unseen(&exited.id, 3);
    let live = rig.create("std").await.unwrap();

    let report = rig.manager.reconcile().await.unwrap();
    let want = ReconcileReport { failed_provisioning: 1, lost: 1, exited: 1, ..Default::default() };
    assert_eq!(report, want);

    let r = rig.record(&interrupted.id).await;
    assert_eq!((r.state, r.state_reason.as_str()), (SandboxState::Failed, "daemon stopped during provisioning"));
    assert!(rig.runtime.objects_of(&interrupted.id).is_empty(), "its half-made container is removed");
    let r = rig.record(&lost.id).await;
    assert_eq!(r.state, SandboxState::Lost);
    let r = rig.record(&exited.id).await;
    assert_eq!((r.state, r.exit_code), (SandboxState::Exited, Some(3)));
    assert_eq!(r.state_reason, "main process exited with code 3");
    assert!(!rig.runtime.objects_of(&exited.id).is_empty(), "an exited sandbox keeps its container until it ends");
    assert_eq!(rig.record(&live.id).await, live, "the live one is untouched");
    assert!(rig.runtime.is_running(&live.id));
    assert!(rig.runtime.adopted().is_empty(), "this process made it: nothing to adopt");
    for act in [action::INTERRUPTED, action::LOST, action::EXIT] {
        assert_eq!(rig.audit(act).await.len(), 1, "{act}");
    }
    assert_eq!(rig.manager.reconcile().await.unwrap(), ReconcileReport::default());
    rig.shutdown().await;
}

/// A live sandbox found by a new process (after a restart) is taken over
/// once: the runtime adopts it on the first pass, not on later ones.
#[tokio::test(start_paused = true)]
async fn a_live_sandbox_is_adopted_once_after_a_restart() {
    let rig = Rig::new([standard()]).await;
    let sb = rig.create("std").await.unwrap();
    assert_eq!(rig.manager.reconcile().await.unwrap(), ReconcileReport::default());
    rig.shutdown().await;

    let after = rig.restarted().await;
    assert_eq!(after.reconcile().await.unwrap(), ReconcileReport { adopted: 1, ..Default::default() });
    assert_eq!(rig.runtime.adopted(), [sb.id.as_str()]);
    assert_eq!(after.reconcile().await.unwrap(), ReconcileReport::default());
    assert_eq!(rig.runtime.adopted(), [sb.id.as_str()], "adopted once");
    assert_eq!(rig.runtime.calls(Op::Adopt), 1);
    assert_eq!(rig.record(&sb.id).await, sb);
    assert!(after.shutdown(Duration::from_secs(5)).await);
}

/// One object the engine keeps refusing to remove is counted as a failed
/// step on every pass, and each pass goes on with the rest (another orphan,
/// a lost sandbox); once the engine accepts, it goes.
#[tokio::test(start_paused = true)]
async fn reconcile_counts_a_step_the_runtime_keeps_refusing_and_goes_on() {
    let rig = Rig::new([standard()]).await;
    let old = GRACE * 2;
    rig.runtime.plant(object(OwnedKind::Sandbox, "ctr-a", Some("sb-a"), true, old));
    rig.runtime.plant(object(OwnedKind::Sandbox, "ctr-b", Some("sb-b"), true, old));
    rig.runtime.fail_on(Op::RemoveOwned, "ctr-a", Fault::Docker);
    let lost = rig.create("std").await.unwrap();
    rig.runtime.vanish(&lost.id);

    let report = rig.manager.reconcile().await.unwrap();
    assert_eq!(report, ReconcileReport { orphans_removed: 1, lost: 1, failed: 1, ..Default::default() });
    let again = rig.manager.reconcile().await.unwrap();
    assert_eq!(again, ReconcileReport { failed: 1, ..Default::default() });
    assert_eq!(rig.runtime.objects().into_iter().map(|o| o.id).collect::<Vec<_>>(), ["ctr-a"]);
    assert_eq!(rig.audit(action::REMOVE_ORPHAN).await.len(), 1, "a refused removal is not on record as done");

    rig.runtime.heal(Op::RemoveOwned, "ctr-a");
    assert_eq!(rig.manager.reconcile().await.unwrap(), ReconcileReport { orphans_removed: 1, ..Default::default() });
    assert!(rig.runtime.objects().is_empty());
    rig.shutdown().await;
}

/// An engine that cannot be reached ends the pass at once (the loop logs it
/// and tries later): on listing, or on a step half-way through.
#[tokio::test(start_paused = true)]
async fn an_unreachable_engine_ends_the_reconcile_pass() {
    let rig = Rig::new([standard()]).await;
    rig.runtime.plant(object(OwnedKind::Sandbox, "ctr-a", Some("sb-a"), true, GRACE * 2));
    rig.runtime.fail_next(Op::Owned, 1, Fault::Unavailable);
    assert!(matches!(rig.manager.reconcile().await, Err(Error::Unavailable(_))));
    rig.runtime.fail_next(Op::RemoveOwned, 1, Fault::Unavailable);
    assert!(matches!(rig.manager.reconcile().await, Err(Error::Unavailable(_))));
    assert_eq!(rig.manager.reconcile().await.unwrap(), ReconcileReport { orphans_removed: 1, ..Default::default() });
    rig.shutdown().await;
}

// ---- expiry ---------------------------------------------------------------

/// A sandbox expires while the engine refuses its removal three times: the
/// teardown is retried with backoff (0.5s, 1s, 2s) until it succeeds, and
/// the sandbox is recorded `expired` once.
#[tokio::test(start_paused = true)]
async fn an_expiry_the_engine_refuses_is_retried_with_backoff_and_recorded_once() {
    let rig = Rig::new([short()]).await;
    rig.manager.start().await.unwrap();
    let sb = rig.create("short").await.unwrap();
    rig.runtime.fail_next(Op::Destroy, 3, Fault::Docker);
    std::thread::sleep(PAST_SHORT);
    let started = tokio::time::Instant::now();
    eventually("the sandbox has expired", || async { rig.record(&sb.id).await.state == SandboxState::Expired }).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(3500), "backed off 0.5s + 1s + 2s between tries: {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!((rig.runtime.calls(Op::Destroy), rig.runtime.calls(Op::Kill)), (4, 1));
    assert!(rig.runtime.objects().is_empty());
    let expired = rig.audit(action::EXPIRE).await;
    assert_eq!(expired.len(), 1);
    assert_eq!((expired[0].entry.reason.as_str(), expired[0].entry.actor.as_str()), ("ttl reached", "sandpitd"));
    rig.shutdown().await;
}

/// Sandboxes falling due at one instant are stopped together: one batch of
/// kills for all whose locks are free, while one whose lock another call
/// holds is stopped on its own once the lock is free, holding up none of
/// the rest (they are killed and recorded expired meanwhile).
#[tokio::test(start_paused = true)]
async fn sandboxes_due_at_one_instant_are_killed_in_one_batch() {
    let rig = Rig::new([short()]).await;
    rig.manager.start().await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(rig.create("short").await.unwrap().id);
    }
    let held = rig.manager.locks.lock(&ids[0]).await;
    std::thread::sleep(PAST_SHORT);
    eventually("the nine with free locks are stopped", || async {
        ids[1..].iter().all(|id| !rig.runtime.is_running(id))
    })
    .await;
    assert!(rig.runtime.is_running(&ids[0]), "its lock is held");
    assert_eq!((rig.runtime.calls(Op::KillAll), rig.runtime.calls(Op::Kill)), (1, 9), "one batch");
    eventually("the nine are recorded expired while the tenth waits", || async {
        let mut all = true;
        for id in &ids[1..] {
            all &= rig.record(id).await.state == SandboxState::Expired;
        }
        all
    })
    .await;
    assert_eq!(rig.record(&ids[0]).await.state, SandboxState::Running);
    drop(held);
    eventually("all have expired", || async {
        let mut all = true;
        for id in &ids {
            all &= rig.record(id).await.state == SandboxState::Expired;
        }
        all
    })
    .await;
    assert_eq!((rig.runtime.calls(Op::KillAll), rig.runtime.calls(Op::Kill)), (2, 10), "and the held one alone");
    assert_eq!(rig.audit(action::EXPIRE).await.len(), 10);
    rig.shutdown().await;
}

/// An extension holding the sandbox's lock when its expiry fires wins: the
/// expiry, waiting for the lock, finds the new deadline and does nothing.
#[tokio::test(start_paused = true)]
async fn an_extension_that_holds_the_lock_when_the_expiry_fires_keeps_the_sandbox() {
    let rig = Rig::new([short()]).await;
    rig.manager.start().await.unwrap();
    let sb = rig.create("short").await.unwrap();
    // Hold the sandbox's lock; the extension queues on it first, then the expiry.
    let guard = rig.manager.locks.lock(&sb.id).await;
    let extend = {
        let (m, caller, id) = (Arc::clone(&rig.manager), rig.caller.clone(), sb.id.clone());
        tokio::spawn(async move { m.extend(&caller, &id, Duration::from_secs(600)).await })
    };
    tokio::time::sleep(Duration::from_millis(1)).await;
    std::thread::sleep(PAST_SHORT);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        rig.manager.expiring.lock().unwrap().contains_key(&sb.id),
        "the expiry has fired and waits for the lock behind the extension"
    );
    drop(guard);
    let extended = extend.await.unwrap().unwrap();
    assert!(extended.expires_at > SystemTime::now() + Duration::from_secs(590));
    eventually("the expiry has given up", || async { !rig.manager.expiring.lock().unwrap().contains_key(&sb.id) })
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(rig.record(&sb.id).await.state, SandboxState::Running);
    assert!(rig.runtime.is_running(&sb.id), "never killed");
    assert_eq!((rig.runtime.calls(Op::Kill), rig.runtime.calls(Op::Destroy)), (0, 0));
    assert!(rig.audit(action::EXPIRE).await.is_empty());
    rig.shutdown().await;
}

/// An extension that arrives while the kill at expiry is under way (the
/// engine is slow to kill) is refused, not accepted for a sandbox whose
/// process is already gone; the expiry then completes.
#[tokio::test(start_paused = true)]
async fn an_extension_that_lands_during_the_kill_at_expiry_is_refused() {
    let rig = Rig::new([short()]).await;
    rig.manager.start().await.unwrap();
    let sb = rig.create("short").await.unwrap();
    rig.runtime.delay(Op::Kill, Duration::from_millis(100));
    std::thread::sleep(PAST_SHORT);
    tokio::time::sleep(Duration::from_millis(40)).await;
    assert_eq!(rig.runtime.calls(Op::Kill), 1, "the kill at expiry is under way");
    let extended = rig.manager.extend(&rig.caller, &sb.id, Duration::from_secs(600)).await;
    let refused = extended.expect_err("the kill at expiry has begun: too late to extend");
    assert!(matches!(refused, Error::FailedPrecondition(_)), "{refused}");
    assert!(refused.to_string().contains("being torn down"), "{refused}");
    eventually("the sandbox has expired", || async { rig.record(&sb.id).await.state == SandboxState::Expired }).await;
    assert_eq!(rig.audit(action::EXPIRE).await.len(), 1);
    rig.shutdown().await;
}

/// The expiry of one sandbox is carried out once and recorded once, even
/// when its deadline falls due again while it runs (reconcile puts the
/// deadlines of the live sandboxes it finds back, and an expired one falls
/// due at once).
#[tokio::test(start_paused = true)]
async fn an_expiry_happens_once_even_when_its_deadline_is_scheduled_again() {
    let rig = Rig::new([short()]).await;
    rig.manager.start().await.unwrap();
    let sb = rig.create("short").await.unwrap();
    rig.runtime.delay(Op::Kill, Duration::from_millis(100));
    std::thread::sleep(PAST_SHORT);
    tokio::time::sleep(Duration::from_millis(40)).await;
    assert_eq!(rig.runtime.calls(Op::Kill), 1, "the expiry is under way");
    // Still running (the kill is slow): reconcile keeps it and schedules it again.
    assert_eq!(rig.manager.reconcile().await.unwrap(), ReconcileReport::default());
    rig.manager.schedule(&rig.record(&sb.id).await);
    eventually("the sandbox has expired", || async { rig.record(&sb.id).await.state == SandboxState::Expired }).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!((rig.runtime.calls(Op::Kill), rig.runtime.calls(Op::Destroy)), (1, 1), "one expiry ran");
    assert_eq!(rig.audit(action::EXPIRE).await.len(), 1, "and it was recorded once");
    let stats = rig.store.stats().await.unwrap();
    assert_eq!(stats.ended, [("expired".to_string(), 1)]);
    rig.shutdown().await;
}

// ---- several daemons on one store --------------------------------------------

/// Two daemons on one store and one engine: a sandbox created on the one
/// off duty is expired by the lease holder (which heard of it, and whose
/// watchers saw it made); while nobody holds the lease nothing expires, and
/// the daemon that takes it expires at once what fell due meanwhile.
/// Every expiry is recorded once.
#[tokio::test(start_paused = true)]
async fn on_a_shared_store_only_the_lease_holder_expires_and_a_new_holder_catches_up() {
    use crate::store::memory::Hub;
    let rig = Rig::new([standard(), short()]).await;
    let hub = Arc::new(Hub::default());
    let (lease_a, lease_b) = (hub.member(true), hub.member(false));
    let daemon = |member: Arc<crate::store::memory::Member>| {
        let store = Arc::new(rig.store.sharing(member)) as Arc<dyn Store>;
        let runtime = Arc::clone(&rig.runtime) as Arc<dyn crate::runtime::Runtime>;
        Manager::new(runtime, store, (*rig.manager.profiles()).clone(), settings())
    };
    let (a, b) = (daemon(Arc::clone(&lease_a)).await.unwrap(), daemon(Arc::clone(&lease_b)).await.unwrap());
    a.start().await.unwrap();
    b.start().await.unwrap();
    assert!(a.on_duty() && !b.on_duty());

    let mut on_a = a.watch(&rig.caller, None, None);
    let first = b.create(&rig.caller, rig.request("short")).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), on_a.next()).await.unwrap().unwrap();
    assert_eq!((seen.kind, seen.sandbox.id.as_str()), (EventKind::Created, first.id.as_str()), "A's watcher");
    std::thread::sleep(PAST_SHORT);
    eventually("the holder expired B's sandbox", || async {
        rig.record(&first.id).await.state == SandboxState::Expired
    })
    .await;
    let seen = tokio::time::timeout(Duration::from_secs(5), on_a.next()).await.unwrap().unwrap();
    assert_eq!((seen.kind, seen.sandbox.id.as_str()), (EventKind::Expired, first.id.as_str()));

    // Nobody holds the lease: a sandbox falls due and stays.
    lease_a.set_lease(false);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let second = a.create(&rig.caller, rig.request("short")).await.unwrap();
    std::thread::sleep(PAST_SHORT);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(rig.record(&second.id).await.state, SandboxState::Running, "nobody on duty");
    assert!(rig.runtime.is_running(&second.id));
    // B takes the lease: what fell due is expired at once.
    lease_b.set_lease(true);
    eventually("the new holder caught up", || async { rig.record(&second.id).await.state == SandboxState::Expired })
        .await;
    let expired = rig.audit(action::EXPIRE).await;
    let ids: Vec<&str> = expired.iter().map(|r| r.entry.sandbox.as_str()).collect();
    assert_eq!(ids, [first.id.as_str(), second.id.as_str()], "each expired once");
    assert!(a.shutdown(Duration::from_secs(5)).await && b.shutdown(Duration::from_secs(5)).await);
}

/// The lease holder fills the warm pool; the other daemon hears of each
/// warm sandbox and claims from it without provisioning anything, and a
/// sandbox claimed on one daemon leaves the other's pool.
#[tokio::test(start_paused = true)]
async fn a_daemon_off_duty_claims_the_holders_warm_sandboxes() {
    use crate::store::memory::Hub;
    let rig = Rig::new([profile("pooled", 2, ["10m", "1h", "1h"])]).await;
    let hub = Arc::new(Hub::default());
    let daemon = |member: Arc<crate::store::memory::Member>| {
        let store = Arc::new(rig.store.sharing(member)) as Arc<dyn Store>;
        let runtime = Arc::clone(&rig.runtime) as Arc<dyn crate::runtime::Runtime>;
        Manager::new(runtime, store, (*rig.manager.profiles()).clone(), settings())
    };
    let (a, b) = (daemon(hub.member(true)).await.unwrap(), daemon(hub.member(false)).await.unwrap());
    b.start().await.unwrap();
    a.start().await.unwrap();
    let warm_on = |m: &Arc<Manager>| {
        let m = Arc::clone(m);
        async move { m.pool_status().await.first().map_or(0, |s| s.warm) }
    };
    eventually("the holder filled its pool and the other heard of it", || async {
        warm_on(&a).await == 2 && warm_on(&b).await == 2
    })
    .await;
    assert_eq!(rig.runtime.calls(Op::Provision), 2, "only the holder fills");
    let claimed = b.create(&rig.caller, rig.request("pooled")).await.unwrap();
    assert_eq!(rig.runtime.calls(Op::Provision), 2, "claimed on B, provisioning nothing");
    assert_eq!(b.pool_status().await[0].claims, 1);
    eventually("A's pool no longer holds the one B claimed", || async {
        !a.warm_sandboxes().await.unwrap().iter().any(|s| s.id == claimed.id) || warm_on(&a).await < 2
    })
    .await;
    let second = a.create(&rig.caller, rig.request("pooled")).await.unwrap();
    assert_ne!(second.id, claimed.id, "never handed out twice");
    assert!(a.shutdown(Duration::from_secs(5)).await && b.shutdown(Duration::from_secs(5)).await);
}

// ---- requests -------------------------------------------------------------

/// Deleting twice returns the same ended record and tears down once; a delete
/// the engine refuses fails, changes nothing, and can simply be retried.
#[tokio::test(start_paused = true)]
async fn delete_is_idempotent() {
    let rig = Rig::new([standard()]).await;
    let sb = rig.create("std").await.unwrap();
    rig.runtime.fail_next(Op::Destroy, 1, Fault::Docker);
    assert!(matches!(rig.manager.delete(&rig.caller, &sb.id).await, Err(Error::Docker { .. })));
    assert_eq!(rig.record(&sb.id).await.state, SandboxState::Running, "nothing changed");

    let deleted = rig.manager.delete(&rig.caller, &sb.id).await.unwrap();
    assert_eq!((deleted.state, deleted.state_reason.as_str()), (SandboxState::Deleted, "deleted by alice"));
    let again = rig.manager.delete(&rig.caller, &sb.id).await.unwrap();
    assert_eq!(again, deleted);
    assert_eq!(rig.runtime.calls(Op::Destroy), 2, "the refused try and the one that worked");
    assert!(rig.runtime.objects().is_empty());
    let outcomes: Vec<Outcome> = rig.audit(action::DELETE_SANDBOX).await.iter().map(|r| r.entry.outcome).collect();
    assert_eq!(outcomes, [Outcome::Failed, Outcome::Succeeded]);

    // Deleting a sandbox whose container is already gone works too.
    let gone = rig.create("std").await.unwrap();
    rig.runtime.vanish(&gone.id);
    assert_eq!(rig.manager.delete(&rig.caller, &gone.id).await.unwrap().state, SandboxState::Deleted);
    rig.shutdown().await;
}

/// An extension that would take a sandbox past its profile's maximum
/// lifetime is refused (rule max-lifetime), audited as denied, and changes
/// nothing; one within it is granted.
#[tokio::test(start_paused = true)]
async fn an_extension_past_the_maximum_lifetime_is_refused() {
    let rig = Rig::new([standard()]).await;
    let sb = rig.create("std").await.unwrap();
    std::thread::sleep(Duration::from_millis(2));
    let e = rig.manager.extend(&rig.caller, &sb.id, Duration::from_secs(3600)).await.unwrap_err();
    assert!(matches!(e, Error::Denied { rule: Rule::MaxLifetime, .. }), "{e:?}");
    assert_eq!(rig.record(&sb.id).await, sb, "nothing changed");
    let refused = rig.audit(action::EXTEND_SANDBOX).await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].entry.outcome, Outcome::Denied);
    assert!(refused[0].entry.reason.contains("maximum lifetime"), "{}", refused[0].entry.reason);

    let ok = rig.manager.extend(&rig.caller, &sb.id, Duration::from_secs(1800)).await.unwrap();
    assert!(ok.expires_at > sb.expires_at && ok.expires_at <= sb.max_expires_at);
    assert_eq!(rig.record(&sb.id).await, ok);
    rig.shutdown().await;
}

/// Exec streams the command's output then its exit code; an `exec` record
/// says what ran before it runs, an `exec-end` record what it sent out, in bytes.
#[tokio::test(start_paused = true)]
async fn exec_streams_output_and_its_end_record_counts_bytes() {
    let rig = Rig::new([standard()]).await;
    let sb = rig.create("std").await.unwrap();
    let run = |command: &[&str]| {
        let spec = ExecSpec { command: command.iter().map(|s| s.to_string()).collect(), ..Default::default() };
        let (m, caller, id) = (Arc::clone(&rig.manager), rig.caller.clone(), sb.id.clone());
        async move {
            let stream = m.exec(&caller, &id, spec, None).await.unwrap();
            stream.map(|o| o.unwrap()).collect::<Vec<_>>().await
        }
    };
    let out = run(&["echo", "hello", "world"]).await;
    assert_eq!(out, [ExecOutput::Stdout(b"hello world\n".to_vec()), ExecOutput::Exit(0)]);
    let exec = rig.audit(action::EXEC).await;
    assert!(exec[0].entry.reason.starts_with("command: echo hello world; tag exec-"), "{}", exec[0].entry.reason);
    eventually("the exec is on record as ended", || async { rig.audit(action::EXEC_END).await.len() == 1 }).await;
    let end = &rig.audit(action::EXEC_END).await[0].entry;
    assert!(end.reason.starts_with("exit 0 after "), "{}", end.reason);
    assert!(end.reason.contains("stdout 12 bytes sha256 ") && end.reason.contains("stderr 0 bytes sha256 "));

    rig.runtime.set_exec_output(ExecScript {
        output: vec![ExecChunk::Stdout(b"abc".to_vec()), ExecChunk::Stderr(b"de".to_vec())],
        exit_code: 2,
    });
    let out = run(&["anything"]).await;
    let want = [ExecOutput::Stdout(b"abc".to_vec()), ExecOutput::Stderr(b"de".to_vec()), ExecOutput::Exit(2)];
    assert_eq!(out, want);
    eventually("the second exec is on record", || async { rig.audit(action::EXEC_END).await.len() == 2 }).await;
    let end = &rig.audit(action::EXEC_END).await[1].entry;
    assert!(end.reason.starts_with("exit 2 after "), "{}", end.reason);
    assert!(end.reason.contains("stdout 3 bytes") && end.reason.contains("stderr 2 bytes"), "{}", end.reason);
    rig.shutdown().await;
}

/// An exec stopped before its end (here: at the profile's output cap) is
/// killed through the runtime with all it started, by the tag it was
/// given; the record says how many processes went.
#[tokio::test(start_paused = true)]
async fn an_exec_stopped_early_is_killed_by_its_tag_and_the_record_says_so() {
    let toml = "max_classification = \"OFFICIAL\"\nimages = [\"img:1\"]\ncommand = [\"sleep\", \"infinity\"]\n\
                [file_transfer]\nmax_exec_output = \"4B\"\n";
    let capped = Profile::parse(Path::new("capped.toml"), toml).unwrap();
    let rig = Rig::new([capped]).await;
    let sb = rig.create("capped").await.unwrap();
    rig.runtime.set_exec_output(ExecScript { output: vec![ExecChunk::Stdout(b"0123456789".to_vec())], exit_code: 0 });
    let spec = ExecSpec { command: vec!["yes".into()], ..Default::default() };
    let out: Vec<_> = rig.manager.exec(&rig.caller, &sb.id, spec, None).await.unwrap().collect().await;
    assert_eq!(out[0].as_ref().unwrap(), &ExecOutput::Stdout(b"0123".to_vec()));
    assert!(matches!(out.last(), Some(Err(Error::ResourceExhausted(_)))), "{out:?}");
    let tag = rig.audit(action::EXEC).await[0].entry.reason.rsplit("tag ").next().unwrap().to_string();
    assert_eq!(rig.runtime.exec_kills(), std::slice::from_ref(&tag));
    let end = &rig.audit(action::EXEC_END).await[0].entry;
    assert!(end.reason.contains(&format!("tag {tag}; killed 1 processes")), "{}", end.reason);

    // One that ends by itself is left alone.
    rig.runtime.set_exec_output(ExecScript { output: vec![ExecChunk::Stdout(b"ok".to_vec())], exit_code: 0 });
    let spec = ExecSpec { command: vec!["true".into()], ..Default::default() };
    let _: Vec<_> = rig.manager.exec(&rig.caller, &sb.id, spec, None).await.unwrap().collect().await;
    assert_eq!(rig.runtime.exec_kills().len(), 1);
    rig.shutdown().await;
}

/// A forwarded connection carries bytes both ways to a listed port only,
/// and is on record when it opens and, with its bytes, when it ends.
#[tokio::test(start_paused = true)]
async fn port_forward_reaches_a_listed_port_only_and_is_on_record() {
    let toml = "max_classification = \"OFFICIAL\"\nimages = [\"img:1\"]\ncommand = [\"sleep\", \"infinity\"]\n\
                [port_forward]\nports = [8888]\n";
    let notebook = Profile::parse(Path::new("notebook.toml"), toml).unwrap();
    let rig = Rig::new([notebook, standard()]).await;
    let sb = rig.create("notebook").await.unwrap();
    let input = futures_util::stream::iter([Ok(b"GET / ".to_vec()), Ok(b"HTTP/1.0\r\n\r\n".to_vec())]).boxed();
    let out = rig.manager.port_forward(&rig.caller, &sb.id, 8888, input).await.unwrap();
    let echoed: Vec<u8> = out
        .map(|c| match c.unwrap() {
            crate::lifecycle::Forwarded::Data(d) => d,
            other => panic!("{other:?}"),
        })
        .collect::<Vec<_>>()
        .await
        .concat();
    assert_eq!(echoed, b"GET / HTTP/1.0\r\n\r\n", "the fake runtime echoes");
    let opened = rig.audit(action::PORT_FORWARD).await;
    assert_eq!(opened[0].entry.reason, "port 8888 opened");
    eventually("the connection's end is on record", || async { !rig.audit(action::PORT_FORWARD_END).await.is_empty() })
        .await;
    let end = &rig.audit(action::PORT_FORWARD_END).await[0].entry;
    assert_eq!(end.outcome, Outcome::Succeeded);
    assert!(
        end.reason.starts_with("port 8888: in 18 bytes sha256 ") && end.reason.contains("; out 18 bytes"),
        "{}",
        end.reason
    );

    let none = futures_util::stream::empty().boxed();
    let e = rig.manager.port_forward(&rig.caller, &sb.id, 9999, none).await.err().unwrap();
    assert!(matches!(e, Error::Denied { rule: Rule::PortForward, .. }), "{e:?}");
    assert!(e.to_string().contains("only 8888"), "{e}");
    let other = rig.create("std").await.unwrap();
    let none = futures_util::stream::empty().boxed();
    let e = rig.manager.port_forward(&rig.caller, &other.id, 8888, none).await.err().unwrap();
    assert!(matches!(e, Error::Denied { rule: Rule::PortForward, .. }), "{e:?}");
    let refused = rig.audit(action::PORT_FORWARD).await;
    assert_eq!(refused.iter().filter(|r| r.entry.outcome == Outcome::Denied).count(), 2);
    rig.shutdown().await;
}

/// Copy-in hands the archive to the runtime and copy-out streams it back;
/// each ends with a record of what moved, in bytes and by hash.
#[tokio::test(start_paused = true)]
async fn copy_in_and_out_move_bytes_and_record_them() {
    let rig = Rig::new([standard()]).await;
    let sb = rig.create("std").await.unwrap();
    let archive = futures_util::stream::iter([Ok(b"tar ".to_vec()), Ok(b"bytes".to_vec())]).boxed();
    let t = rig.manager.copy_in(&rig.caller, &sb.id, "/work", archive).await.unwrap();
    assert_eq!((t.size, t.path.as_str()), (9, "/work"));
    assert_eq!(rig.runtime.file(&sb.id, "/work").unwrap(), b"tar bytes");
    let rec = &rig.audit(action::COPY_IN).await[0].entry;
    assert_eq!(rec.reason, format!("9 bytes sha256 {} into /work", t.sha256));

    let out: Vec<CopyOut> =
        rig.manager.copy_out(&rig.caller, &sb.id, "/work").await.unwrap().map(|c| c.unwrap()).collect().await;
    assert_eq!(out, [CopyOut::Chunk(b"tar bytes".to_vec()), CopyOut::Done(t.clone())]);
    let rec = &rig.audit(action::COPY_OUT).await[0].entry;
    assert_eq!(rec.reason, format!("9 bytes sha256 {} from /work", t.sha256));
    rig.shutdown().await;
}

// ---- events -----------------------------------------------------------------

/// The runtime's events reach the record at once: a main process that dies
/// is recorded `exited`; a warm one that dies is failed and never handed out.
#[tokio::test(start_paused = true)]
async fn a_died_event_records_the_exit_at_once() {
    let rig = Rig::new([standard(), profile("pooled", 1, ["10m", "1h", "1h"])]).await;
    rig.manager.start().await.unwrap();
    let sb = rig.create("std").await.unwrap();
    rig.runtime.exit_main(&sb.id, 42);
    eventually("the exit is on record", || async { rig.record(&sb.id).await.state == SandboxState::Exited }).await;
    assert_eq!(rig.record(&sb.id).await.exit_code, Some(42));

    eventually("the pool holds one", || async { rig.manager.warm_sandboxes().await.unwrap().len() == 1 }).await;
    let warm = rig.manager.warm_sandboxes().await.unwrap().remove(0);
    rig.runtime.exit_main(&warm.id, 1);
    eventually("the dead warm one is failed", || async { rig.record(&warm.id).await.state == SandboxState::Failed })
        .await;
    let claimed = rig.create("pooled").await.unwrap();
    assert_ne!(claimed.id, warm.id);
    assert!(rig.runtime.is_running(&claimed.id));
    rig.shutdown().await;
}

/// A runtime that reports a sandbox lost (its node died) has it recorded
/// `lost` at once with the runtime's reason, audited once, and seen by
/// watchers; a report for an ended sandbox changes nothing.
#[tokio::test(start_paused = true)]
async fn a_lost_event_records_the_loss_with_its_reason() {
    let rig = Rig::new([standard()]).await;
    rig.manager.start().await.unwrap();
    let mut events = rig.manager.watch(&rig.caller, None, None);
    let sb = rig.create("std").await.unwrap();
    let other = rig.create("std").await.unwrap();
    rig.runtime.lose(&sb.id, "its node n2 is down (heartbeat failure)");
    eventually("the loss is on record", || async { rig.record(&sb.id).await.state == SandboxState::Lost }).await;
    assert_eq!(rig.record(&sb.id).await.state_reason, "its node n2 is down (heartbeat failure)");
    assert_eq!(rig.record(&other.id).await.state, SandboxState::Running, "only the one reported");
    let lost = loop {
        let ev = events.next().await.unwrap();
        if ev.kind == EventKind::Lost {
            break ev;
        }
    };
    assert_eq!(lost.sandbox.id, sb.id);
    rig.runtime.lose(&sb.id, "reported twice");
    rig.manager.delete(&rig.caller, &other.id).await.unwrap();
    rig.runtime.lose(&other.id, "after its delete");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rig.record(&other.id).await.state, SandboxState::Deleted);
    assert_eq!(rig.audit(crate::audit::action::LOST).await.len(), 1, "one loss on record");
    rig.shutdown().await;
}

/// Where the runtime relays egress (a swarm), the proxy knows an allowlist
/// sandbox by its relay's key alone, and forgets it once the sandbox is
/// lost or deleted.
#[tokio::test]
async fn an_allowlist_sandbox_behind_a_relay_is_known_to_the_proxy_by_its_key_until_it_ends() {
    use crate::egress::Policy;
    let toml = "max_classification = \"OFFICIAL\"\nimages = [\"img:1\"]\ncommand = [\"sleep\", \"infinity\"]\n\
                [network]\nmode = \"allowlist\"\n[[network.allow]]\nhost = \"example.org\"\nport = 443\nresidency = \"UK\"\n";
    let allow = Profile::parse(Path::new("allow.toml"), toml).unwrap();
    let rig = Rig::new([allow]).await;
    rig.runtime.relay_egress();
    rig.manager.start().await.unwrap();
    let a = rig.create("allow").await.unwrap();
    let b = rig.create("allow").await.unwrap();
    let key = |sb: &Sandbox| sb.network.as_ref().and_then(|n| n.egress_key.clone()).expect("a relay key");
    let (ka, kb) = (key(&a), key(&b));
    let known = rig.manager.lookup_relay(&ka).expect("A by its key");
    assert_eq!(known.0, a.id);
    assert_eq!(known.1, vec![crate::egress::Destination::new("example.org", 443)]);
    assert_eq!(rig.manager.lookup_relay(&kb).map(|k| k.0), Some(b.id.clone()));
    assert_eq!(rig.manager.lookup(std::net::IpAddr::V4(a.network.as_ref().unwrap().address)), None, "not by address");
    assert_eq!(rig.manager.lookup_relay("relay-unknown"), None);

    rig.runtime.lose(&a.id, "its egress relay ended");
    eventually("A's loss is on record", || async { rig.record(&a.id).await.state == SandboxState::Lost }).await;
    assert_eq!(rig.manager.lookup_relay(&ka), None, "a lost sandbox's key opens nothing");
    rig.manager.delete(&rig.caller, &b.id).await.unwrap();
    assert_eq!(rig.manager.lookup_relay(&kb), None, "nor a deleted one's");
    rig.shutdown().await;
}

/// An OOM kill of the main process is recorded as one whichever of the
/// engine's `oom` and `die` events comes first; a SIGKILL with no OOM event
/// is a plain exit 137.
#[tokio::test(start_paused = true)]
async fn an_oom_event_trailing_the_exit_is_still_the_cause_on_record() {
    let rig = Rig::new([standard()]).await;
    rig.manager.start().await.unwrap();
    for (late, oom) in [(false, true), (true, true), (false, false)] {
        let sb = rig.create("std").await.unwrap();
        match (late, oom) {
            (false, true) => rig.runtime.oom_kill(&sb.id),
            (true, _) => rig.runtime.oom_kill_reported_late(&sb.id),
            (false, false) => rig.runtime.exit_main(&sb.id, 137),
        }
        eventually("the exit is on record", || async { rig.record(&sb.id).await.state == SandboxState::Exited }).await;
        let rec = rig.record(&sb.id).await;
        assert_eq!((rec.exit_code, rec.oom_killed), (Some(137), oom), "late {late}");
        assert_eq!(rec.state_reason.contains("OOM killer"), oom, "late {late}: {}", rec.state_reason);
        let exits: Vec<_> = rig.audit(action::EXIT).await.into_iter().filter(|e| e.entry.sandbox == sb.id).collect();
        let ooms: Vec<_> = rig.audit(action::OOM_KILL).await.into_iter().filter(|e| e.entry.sandbox == sb.id).collect();
        assert_eq!((exits.len(), ooms.len()), (1, oom as usize), "late {late}");
        if oom {
            assert!(ooms[0].seq < exits[0].seq, "late {late}: the OOM kill is on record before the exit");
            assert!(exits[0].entry.reason.contains("OOM killer"), "late {late}");
        }
    }
    // Exits held for a trailing OOM event are held together, not one after another.
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(rig.create("std").await.unwrap().id);
    }
    let started = tokio::time::Instant::now();
    for id in &ids {
        rig.runtime.exit_main(id, 137);
    }
    for id in &ids {
        eventually("the exit is on record", || async { rig.record(id).await.state == SandboxState::Exited }).await;
    }
    assert!(started.elapsed() < Duration::from_millis(400), "{:?}", started.elapsed());
    rig.shutdown().await;
}
