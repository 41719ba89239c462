//! The dashboard's pages. Each reads through the same manager calls as the
//! gRPC API, as the signed-in caller, and renders a whole page.

use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::html::{self, esc, table, time_el, Nav};
use super::{html_response, Dashboard};
use crate::checkpoints::ChainStatus;
use sandpit_core::auth::{Caller, Role};
use sandpit_core::error::Code;
use sandpit_core::lifecycle::ActiveExperiment;
use sandpit_core::register::{AssessmentStatus, Decision, Experiment, Risk, RiskStatus, Status};
use sandpit_core::sandbox::Sandbox;
use sandpit_core::store::AuditQuery;
use sandpit_core::Error;

/// Audit rows per page.
const AUDIT_PAGE: usize = 100;

fn failed(e: Error, caller: &Caller, csrf: &str) -> Response {
    // From the error's one status table, as the gRPC answer would say it.
    let status = match e.code() {
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::PermissionDenied | Code::Unauthenticated => StatusCode::FORBIDDEN,
        Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
        Code::Unavailable | Code::ResourceExhausted => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Ok | Code::Cancelled | Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::warn!(error = %e, "dashboard page failed");
    }
    let body = format!("<p class=\"error\" role=\"alert\">{}</p>", esc(&e.to_string()));
    (status, html_response(html::page("Could not show this", Some(caller), Nav::None, csrf, &body))).into_response()
}

fn experiment_link(e: &Experiment) -> String {
    format!("<a href=\"/experiments/{}\">{}</a><br><code>{}</code>", html::url(&e.id), esc(&e.title), esc(&e.id))
}

fn status_badge(s: Status) -> String {
    let class = match s {
        Status::Approved => "ok",
        Status::Rejected => "bad",
        Status::Proposed => "warn",
        Status::Closed => "",
    };
    format!("<span class=\"badge {class}\">{}</span>", s.as_str())
}

fn decision(e: &Experiment) -> String {
    let mut out = status_badge(e.status);
    let pending = e.pending_functions();
    if e.status == Status::Proposed {
        if !pending.is_empty() {
            let _ = write!(out, " awaiting sign-off by {}", esc(&pending.join(", ")));
        } else if e.approvals.is_empty() {
            out.push_str(" awaiting a decision");
        }
    }
    if e.approvals.is_empty() {
        return out;
    }
    out.push_str("<ul>");
    for a in &e.approvals {
        let verb = match a.decision {
            Decision::Approved => "Approved",
            Decision::Rejected => "Rejected",
        };
        let function = if a.function.is_empty() { String::new() } else { format!(" for {}", esc(&a.function)) };
        let _ = write!(
            out,
            "<li>{verb}{function} by {} ({}) on {}",
            esc(&a.approver),
            esc(&a.approver_team),
            time_el(a.time)
        );
        if !a.conditions.is_empty() {
            let _ = write!(out, "; conditions: {}", esc(&a.conditions));
        }
        out.push_str("</li>");
    }
    out.push_str("</ul>");
    out
}

/// Risks with their status, owner and review date, overdue reviews marked;
/// `history` adds every change and review.
fn risks(list: &[Risk], now: SystemTime, history: bool) -> String {
    if list.is_empty() {
        return "<span class=\"empty\">none recorded</span>".into();
    }
    let mut out = String::from("<ul>");
    for r in list {
        let status_class = match r.status {
            RiskStatus::Open => "warn",
            RiskStatus::Closed => "",
            RiskStatus::Mitigated | RiskStatus::Accepted => "ok",
        };
        let _ = write!(
            out,
            "<li><code>{}</code> {} <span class=\"badge\">likelihood {}, impact {}</span> \
             <span class=\"badge {status_class}\">{}</span>",
            esc(&r.id),
            esc(&r.description),
            r.likelihood,
            r.impact,
            r.status
        );
        match r.review_by {
            Some(t) if r.overdue(now) => {
                let _ = write!(out, " <span class=\"badge bad\">review overdue since {}</span>", time_el(t));
            }
            Some(t) => {
                let _ = write!(out, "<br>Review by {}", time_el(t));
            }
            None => {}
        }
        if !r.mitigation.is_empty() {
            let _ = write!(out, "<br>Mitigation: {}", esc(&r.mitigation));
        }
        if !r.owner.is_empty() {
            let _ = write!(out, "<br>Owner: {}", esc(&r.owner));
        }
        if history && !r.history.is_empty() {
            out.push_str("<details><summary>History</summary><ol>");
            for u in &r.history {
                let _ = write!(
                    out,
                    "<li>{}: {} by {} ({}){}</li>",
                    time_el(u.time),
                    esc(&u.changes),
                    esc(&u.by),
                    esc(&u.team),
                    if u.reason.is_empty() { String::new() } else { format!(": {}", esc(&u.reason)) }
                );
            }
            out.push_str("</ol></details>");
        }
        out.push_str("</li>");
    }
    out.push_str("</ul>");
    out
}

fn assessments(e: &Experiment) -> String {
    if e.assessments.is_empty() {
        return "<span class=\"empty\">none recorded</span>".into();
    }
    let rows: Vec<Vec<String>> = e
        .assessments
        .iter()
        .map(|a| {
            let class = if a.status == AssessmentStatus::Completed { "ok" } else { "warn" };
            vec![
                esc(a.kind.title()),
                format!("<span class=\"badge {class}\">{}</span>", a.status.as_str()),
                esc(&a.reference),
                time_el(a.date),
                format!("{} on {}", esc(&a.recorded_by), time_el(a.recorded_at)),
            ]
        })
        .collect();
    table("Impact assessments on record", &["Assessment", "Status", "Reference", "Date", "Recorded"], &rows, "")
}

fn live_sandboxes(list: &[(Sandbox, Duration)]) -> String {
    if list.is_empty() {
        return "<span class=\"empty\">none</span>".into();
    }
    let mut out = String::from("<ul>");
    for (sb, left) in list {
        let _ = write!(
            out,
            "<li><code>{}</code> {} ({}), {} left</li>",
            esc(&sb.id),
            esc(&sb.profile.name),
            sb.state.as_str(),
            html::left(*left)
        );
    }
    out.push_str("</ul>");
    out
}

pub async fn active(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    let (caller, csrf) = match d.signed_in(&headers, Nav::Active, "/active") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let list: Vec<ActiveExperiment> = match d.manager.active_experiments().await {
        Ok(l) => l,
        Err(e) => return failed(e, &caller, &csrf),
    };
    let live: usize = list.iter().map(|a| a.sandboxes.len()).sum();
    let now = SystemTime::now();
    let overdue: usize = list.iter().map(|a| a.experiment.overdue_risks(now).count()).sum();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            let e = &a.experiment;
            vec![
                experiment_link(e),
                esc(&e.team),
                esc(e.classification.as_str()),
                decision(e),
                risks(&e.risks, now, false),
                live_sandboxes(&a.sandboxes),
            ]
        })
        .collect();
    let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let overdue = match overdue {
        0 => String::new(),
        n => format!(" <strong class=\"bad\">{} overdue for review.</strong>", plural(n, "risk is", "risks are")),
    };
    let body = format!(
        "<p>{} have sandboxes or may have them; {} live.{overdue}</p>{}",
        plural(list.len(), "experiment", "experiments"),
        plural(live, "sandbox is", "sandboxes are"),
        table(
            "Experiments that may have sandboxes now",
            &["Experiment", "Team", "Classification", "Approval", "Risks", "Live sandboxes (time left)"],
            &rows,
            "No experiment is active."
        )
    );
    html_response(html::page("Active experiments", Some(&caller), Nav::Active, &csrf, &body))
}

pub async fn approvals(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    let (caller, csrf) = match d.signed_in(&headers, Nav::Approvals, "/approvals") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let list = match d.manager.list_experiments(&caller, None, Some(Status::Proposed)).await {
        Ok(l) => l,
        Err(e) => return failed(e, &caller, &csrf),
    };
    let now = SystemTime::now();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            vec![
                experiment_link(e),
                format!("{}<br>{}", esc(&e.team), esc(&e.owner)),
                esc(e.classification.as_str()),
                esc(&e.purpose),
                decision(e),
                risks(&e.risks, now, false),
                time_el(e.created_at),
            ]
        })
        .collect();
    let mut body = table(
        "Experiments awaiting a decision",
        &["Experiment", "Team and owner", "Classification", "Purpose", "Sign-offs", "Risks", "Registered"],
        &rows,
        "Nothing is waiting for a decision.",
    );
    if caller.has(Role::Approver) {
        let functions = if caller.functions.is_empty() {
            "no particular function".to_string()
        } else {
            esc(&caller.functions.join(", "))
        };
        let _ = write!(
            body,
            "<p>You sign for {functions}. An approver outside the requesting team signs off with \
             <code>sandpit approve ID --function FUNCTION --conditions \"...\"</code> or <code>sandpit reject</code>; \
             an experiment is approved once every function its classification needs has signed.</p>"
        );
    }
    html_response(html::page("Pending approvals", Some(&caller), Nav::Approvals, &csrf, &body))
}

#[derive(serde::Deserialize, Default)]
pub struct RegisterQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    status: String,
}

/// Whether `e` matches every word of `q` (case-insensitive) somewhere in
/// what a reader would search: titles, purposes, outcomes, lessons, tools.
pub(super) fn matches(e: &Experiment, q: &str) -> bool {
    let hay = [
        e.id.as_str(),
        &e.title,
        &e.purpose,
        &e.team,
        &e.owner,
        &e.lessons_learnt,
        e.outcome.map_or("", |o| o.as_str()),
        e.classification.as_str(),
        &e.ai_tools.join(" "),
        &e.models.join(" "),
    ]
    .join("\n")
    .to_lowercase();
    q.split_whitespace().all(|w| hay.contains(&w.to_lowercase()))
}

pub async fn register(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Query(rq): Query<RegisterQuery>,
) -> Response {
    let here = format!("/register?q={}&status={}", html::url(&rq.q), html::url(&rq.status));
    let (caller, csrf) = match d.signed_in(&headers, Nav::Register, &here) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let statuses = [Status::Proposed, Status::Approved, Status::Rejected, Status::Closed];
    let status = match rq.status.as_str() {
        "" => None,
        s => match statuses.into_iter().find(|x| x.as_str() == s) {
            Some(x) => Some(x),
            None => {
                let e = Error::invalid("status", format!("'{s}' is not one of proposed, approved, rejected, closed"));
                return failed(e, &caller, &csrf);
            }
        },
    };
    let list = match d.manager.list_experiments(&caller, None, status).await {
        Ok(l) => l,
        Err(e) => return failed(e, &caller, &csrf),
    };
    let found: Vec<&Experiment> = list.iter().filter(|e| matches(e, &rq.q)).collect();
    let mut options = String::from("<option value=\"\">any</option>");
    for s in statuses {
        let sel = if Some(s) == status { " selected" } else { "" };
        let _ = write!(options, "<option{sel}>{}</option>", s.as_str());
    }
    let form = format!(
        "<form method=\"get\" action=\"/register\" class=\"filters\" role=\"search\">\
         <label for=\"q\">Search titles, purposes, outcomes and lessons learnt<input id=\"q\" name=\"q\" type=\"search\" value=\"{}\" size=\"40\"></label>\
         <label for=\"status\">Status<select id=\"status\" name=\"status\">{options}</select></label>\
         <button type=\"submit\">Search</button></form>",
        esc(&rq.q)
    );
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|e| {
            let lessons = if e.lessons_learnt.is_empty() {
                "<span class=\"empty\">none yet</span>".into()
            } else {
                esc(&e.lessons_learnt)
            };
            vec![
                experiment_link(e),
                esc(&e.team),
                esc(e.classification.as_str()),
                status_badge(e.status),
                e.outcome.map_or(String::new(), |o| esc(o.as_str())),
                lessons,
                e.closed_at.map_or(String::new(), time_el),
            ]
        })
        .collect();
    let caption = format!("{} of {} experiments in the register", found.len(), list.len());
    let body = format!(
        "{form}{}",
        table(
            &caption,
            &["Experiment", "Team", "Classification", "Status", "Outcome", "Lessons learnt", "Closed"],
            &rows,
            "No experiment matches."
        )
    );
    html_response(html::page("Register", Some(&caller), Nav::Register, &csrf, &body))
}

#[derive(serde::Deserialize, Default)]
pub struct After {
    #[serde(default)]
    after: u64,
}

pub async fn experiment(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(page): Query<After>,
) -> Response {
    let here = format!("/experiments/{}", html::url(&id));
    let (caller, csrf) = match d.signed_in(&headers, Nav::Register, &here) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if let Err(e) = sandpit_core::policy::admission::validate_name("id", &id) {
        return failed(e, &caller, &csrf);
    }
    let e = match d.manager.get_experiment(&caller, &id).await {
        Ok(e) => e,
        Err(e) => return failed(e, &caller, &csrf),
    };
    let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { esc(&v.join(", ")) };
    let mut body = format!(
        "<dl><dt>Id</dt><dd><code>{}</code></dd><dt>Team</dt><dd>{}</dd><dt>Owner</dt><dd>{}</dd>\
         <dt>Classification</dt><dd>{}</dd><dt>Status</dt><dd>{}</dd><dt>Purpose</dt><dd>{}</dd>\
         <dt>AI tools</dt><dd>{}</dd><dt>Models</dt><dd>{}</dd><dt>Datasets</dt><dd>{}</dd>\
         <dt>Registered</dt><dd>{}</dd><dt>Planned end</dt><dd>{}</dd>",
        esc(&e.id),
        esc(&e.team),
        esc(&e.owner),
        esc(e.classification.as_str()),
        status_badge(e.status),
        esc(&e.purpose),
        list(&e.ai_tools),
        list(&e.models),
        list(&e.datasets),
        time_el(e.created_at),
        e.planned_end.map_or("not set".to_string(), time_el),
    );
    if let Some(closed) = e.closed_at {
        let _ = write!(
            body,
            "<dt>Closed</dt><dd>{} by {} ({})</dd><dt>Outcome</dt><dd>{}</dd><dt>Lessons learnt</dt><dd>{}</dd>",
            time_el(closed),
            esc(&e.closed_by),
            esc(&e.closed_by_team),
            e.outcome.map_or("", |o| o.as_str()),
            esc(&e.lessons_learnt)
        );
        for (k, v) in [("What worked", &e.what_worked), ("What did not work", &e.what_did_not)] {
            if !v.is_empty() {
                let _ = write!(body, "<dt>{k}</dt><dd>{}</dd>", esc(v));
            }
        }
        if !e.artefacts.is_empty() {
            let _ = write!(body, "<dt>Reusable artefacts</dt><dd>{}</dd>", list(&e.artefacts));
        }
    }
    body.push_str("</dl><h2>Approval</h2>");
    if !e.required_functions.is_empty() {
        let _ = write!(body, "<p>Sign-off needed from: {}.</p>", esc(&e.required_functions.join(", ")));
    }
    body.push_str(&decision(&e));
    body.push_str("<h2>Risks</h2>");
    body.push_str(&risks(&e.risks, SystemTime::now(), true));
    body.push_str("<h2>Impact assessments</h2>");
    body.push_str(&assessments(&e));
    body.push_str("<h2>Transparency record (ATRS)</h2><dl>");
    let text = |v: &str| if v.is_empty() { "<span class=\"empty\">not set</span>".to_string() } else { esc(v) };
    for (k, v) in [
        ("Senior responsible owner", &e.senior_responsible_owner),
        ("Phase", &e.phase),
        ("Function", &e.function),
        ("Region", &e.region),
    ] {
        let _ = write!(body, "<dt>{k}</dt><dd>{}</dd>", text(v));
    }
    for (k, v) in &e.transparency {
        let _ = write!(body, "<dt><code>{}</code></dt><dd>{}</dd>", esc(k), esc(v));
    }
    body.push_str("</dl>");
    if Nav::Audit.allows(&caller) {
        let id = html::url(&e.id);
        let _ = write!(
            body,
            "<p>Export: ATRS record <a href=\"/exports/atrs.json?experiment={id}\">JSON</a> or \
             <a href=\"/exports/atrs.csv?experiment={id}\">CSV</a>{}</p>",
            if e.status == Status::Closed {
                format!("; lessons learnt <a href=\"/exports/lessons.md?experiment={id}\">Markdown</a> or <a href=\"/exports/lessons.html?experiment={id}\">HTML</a>")
            } else {
                String::new()
            }
        );
    }

    let sandboxes = match d.manager.list(&caller, Some(e.id.clone()), true).await {
        Ok(l) => l,
        Err(err) => return failed(err, &caller, &csrf),
    };
    let now = SystemTime::now();
    let rows: Vec<Vec<String>> = sandboxes
        .iter()
        .map(|sb| {
            let until = match sb.ended_at {
                Some(t) => format!("ended {}", time_el(t)),
                None => format!(
                    "expires {} ({} left)",
                    time_el(sb.expires_at),
                    html::left(sb.expires_at.duration_since(now).unwrap_or_default())
                ),
            };
            vec![
                format!("<code>{}</code>", esc(&sb.id)),
                esc(&sb.profile.name),
                esc(sb.classification.as_str()),
                esc(sb.state.as_str()),
                time_el(sb.created_at),
                until,
                esc(&sb.state_reason),
            ]
        })
        .collect();
    body.push_str("<h2 id=\"sandboxes\">Sandboxes</h2>");
    body.push_str(&table(
        "Every sandbox of the experiment, live and ended",
        &["Sandbox", "Profile", "Classification", "State", "Created", "Until", "Why"],
        &rows,
        "No sandbox was made for it.",
    ));

    body.push_str("<h2 id=\"timeline\">Timeline</h2>");
    if Nav::Audit.allows(&caller) {
        let q = AuditQuery {
            experiment: Some(e.id.clone()),
            after_seq: page.after,
            limit: AUDIT_PAGE,
            ..Default::default()
        };
        let found = match d.manager.query_audit(&q).await {
            Ok(p) => p,
            Err(err) => return failed(err, &caller, &csrf),
        };
        body.push_str(&audit_rows("What happened, from the audit log, oldest first", &found.records, false));
        if let (true, Some(last)) = (found.more, found.records.last()) {
            let _ = write!(body, "<p><a href=\"{here}?after={}#timeline\">Later events</a></p>", last.seq);
        }
    } else {
        body.push_str("<p class=\"empty\">The timeline comes from the audit log, which auditors read.</p>");
    }
    html_response(html::page(&e.title, Some(&caller), Nav::None, &csrf, &body))
}

fn audit_rows(caption: &str, records: &[sandpit_core::audit::AuditRecord], with_experiment: bool) -> String {
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let e = &r.entry;
            let actor = if e.role.is_empty() { esc(&e.actor) } else { format!("{} ({})", esc(&e.actor), esc(&e.role)) };
            let class = match e.outcome {
                sandpit_core::audit::Outcome::Succeeded => "ok",
                sandpit_core::audit::Outcome::Denied => "bad",
                sandpit_core::audit::Outcome::Failed => "warn",
            };
            let mut target = String::new();
            if !e.sandbox.is_empty() {
                let _ = write!(target, "<code>{}</code>", esc(&e.sandbox));
            }
            if with_experiment && !e.experiment.is_empty() {
                let _ = write!(
                    target,
                    "{}<a href=\"/experiments/{}\"><code>{}</code></a>",
                    if target.is_empty() { "" } else { "<br>" },
                    html::url(&e.experiment),
                    esc(&e.experiment)
                );
            }
            vec![
                r.seq.to_string(),
                time_el(e.time),
                actor,
                format!("<span title=\"{}\">{}</span>", esc(&e.action), esc(&html::action(&e.action))),
                target,
                format!("<span class=\"badge {class}\">{}</span>", e.outcome.as_str()),
                esc(&e.reason),
                esc(&e.source),
            ]
        })
        .collect();
    table(caption, &["#", "Time", "Who", "Action", "On", "Outcome", "Detail", "From"], &rows, "No events.")
}

#[derive(serde::Deserialize, Default)]
pub struct AuditFilters {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    experiment: String,
    #[serde(default)]
    sandbox: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    after: u64,
}

fn parse_time(field: &'static str, v: &str) -> Result<Option<SystemTime>, Error> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    humantime::parse_rfc3339_weak(v)
        .map(Some)
        .map_err(|e| Error::invalid(field, format!("'{v}' is not a time like 2026-11-30 09:00:00 ({e})")))
}

pub async fn audit(State(d): State<Arc<Dashboard>>, headers: HeaderMap, Query(f): Query<AuditFilters>) -> Response {
    let filters = format!(
        "actor={}&action={}&experiment={}&sandbox={}&since={}&until={}",
        html::url(&f.actor),
        html::url(&f.action),
        html::url(&f.experiment),
        html::url(&f.sandbox),
        html::url(&f.since),
        html::url(&f.until)
    );
    let (caller, csrf) = match d.signed_in(&headers, Nav::Audit, &format!("/audit?{filters}")) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
    let (since, until) = match (parse_time("since", &f.since), parse_time("until", &f.until)) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => return failed(e, &caller, &csrf),
    };
    let q = AuditQuery {
        since,
        until,
        actor: some(&f.actor),
        experiment: some(&f.experiment),
        sandbox: some(&f.sandbox),
        action: some(&f.action),
        after_seq: f.after,
        limit: AUDIT_PAGE,
        max_bytes: 0,
    };
    let found = match d.manager.query_audit(&q).await {
        Ok(p) => p,
        Err(e) => return failed(e, &caller, &csrf),
    };
    let field = |id: &str, label: &str, value: &str, hint: &str| {
        format!(
            "<label for=\"{id}\">{label}<input id=\"{id}\" name=\"{id}\" value=\"{}\" placeholder=\"{hint}\"></label>",
            esc(value)
        )
    };
    let mut body = format!(
        "<form method=\"get\" action=\"/audit\" class=\"filters\" role=\"search\">{}{}{}{}{}{}<button type=\"submit\">Search</button></form>",
        field("actor", "Who", &f.actor, "alice"),
        field("action", "Action", &f.action, "expire"),
        field("experiment", "Experiment", &f.experiment, "exp-…"),
        field("sandbox", "Sandbox", &f.sandbox, "sb-…"),
        field("since", "Since (UTC)", &f.since, "2026-11-30 09:00:00"),
        field("until", "Until (UTC)", &f.until, "2026-11-30 18:00:00"),
    );
    body.push_str(&audit_rows("Audit events, oldest first", &found.records, true));
    if let (true, Some(last)) = (found.more, found.records.last()) {
        let _ = write!(body, "<p><a href=\"/audit?{filters}&after={}\">Next {AUDIT_PAGE} events</a></p>", last.seq);
    }
    html_response(html::page("Audit log", Some(&caller), Nav::Audit, &csrf, &body))
}

#[derive(serde::Deserialize, Default)]
pub struct Verify {
    #[serde(default)]
    full: Option<String>,
}

pub async fn verification(State(d): State<Arc<Dashboard>>, headers: HeaderMap, Query(v): Query<Verify>) -> Response {
    let (caller, csrf) = match d.signed_in(&headers, Nav::Verification, "/verification") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let mut body = String::from("<h2>The chain, as the daemon checks it</h2>");
    match d.checkpoints.status().await {
        ChainStatus::Starting => body.push_str("<p class=\"warn\">The check at start has not finished yet.</p>"),
        ChainStatus::Broken(reason) => {
            let _ = write!(
                body,
                "<p class=\"error\" role=\"alert\"><strong>The chain does not verify</strong>: {}. No checkpoint is signed until it is investigated.</p>",
                esc(&reason)
            );
        }
        ChainStatus::Healthy { verified, latest } => {
            let _ = write!(
                body,
                "<p><span class=\"badge ok\">verified</span> through record {verified}: the daemon checks the chain \
                 at start and again before each checkpoint it signs (a full recomputation is below).</p>"
            );
            body.push_str("<h2>Latest signed checkpoint</h2>");
            match latest {
                None => body.push_str(
                    "<p class=\"empty\">None signed yet: the first is signed once records have been added for \
                     <code>audit.checkpoint_interval</code>, or after <code>audit.checkpoint_every</code> records.</p>",
                ),
                Some(s) => {
                    let _ = write!(
                        body,
                        "<dl><dt>Log</dt><dd><code>{}</code></dd><dt>Records</dt><dd>{}</dd></dl>\
                         <p>The signed note, as written to the checkpoint directory (check it off this host with \
                         <code>sandpit audit verify --checkpoint FILE --verifier-key KEY</code>):</p><pre>{}</pre>",
                        esc(&s.checkpoint.origin),
                        s.checkpoint.size,
                        esc(&s.note)
                    );
                }
            }
        }
    }
    let _ = write!(body, "<p>Verifier key: <code>{}</code></p>", esc(&d.checkpoints.verifier().to_string()));
    body.push_str("<h2>Verify the whole chain now</h2>");
    if v.full.is_some() {
        match d.manager.verify_audit().await {
            Ok(r) if r.ok => {
                let _ = write!(
                    body,
                    "<p role=\"status\"><span class=\"badge ok\">intact</span> All {} records verify; head <code>{}</code>.</p>",
                    r.records,
                    hex::encode(r.head_hash)
                );
            }
            Ok(r) => {
                let _ = write!(
                    body,
                    "<p class=\"error\" role=\"alert\"><strong>Broken</strong> at record {} of {}: {}</p>",
                    r.first_bad_seq,
                    r.records,
                    esc(&r.reason)
                );
            }
            Err(e) => return failed(e, &caller, &csrf),
        }
    }
    body.push_str(
        "<form method=\"get\" action=\"/verification\"><input type=\"hidden\" name=\"full\" value=\"1\">\
         <button type=\"submit\">Recompute every hash</button></form>",
    );
    html_response(html::page("Verification", Some(&caller), Nav::Verification, &csrf, &body))
}

#[derive(serde::Deserialize, Default)]
pub struct ExportQuery {
    #[serde(default)]
    experiment: String,
    #[serde(default)]
    include_above_official: bool,
}

/// An export as a download, for auditors: `register.{json,csv}`,
/// `sandboxes.{json,csv}`, `atrs.{json,csv}`, `lessons.{md,html}`, through
/// the same code as the gRPC Export (lessons above OFFICIAL only when asked,
/// and then on record).
pub async fn export(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path(file): Path<String>,
    Query(q): Query<ExportQuery>,
) -> Response {
    use crate::proto::{ExportFormat as F, ExportKind as K};
    let here = format!("/exports/{}", html::url(&file));
    let (caller, csrf) = match d.signed_in(&headers, Nav::Audit, &here) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let (kind, format, content_type) = match file.as_str() {
        "register.json" => (K::Register, F::Json, "application/json"),
        "register.csv" => (K::Register, F::Csv, "text/csv; charset=utf-8"),
        "sandboxes.json" => (K::ActiveSandboxes, F::Json, "application/json"),
        "sandboxes.csv" => (K::ActiveSandboxes, F::Csv, "text/csv; charset=utf-8"),
        "atrs.json" => (K::Atrs, F::Json, "application/json"),
        "atrs.csv" => (K::Atrs, F::Csv, "text/csv; charset=utf-8"),
        "lessons.md" => (K::Lessons, F::Markdown, "text/markdown; charset=utf-8"),
        "lessons.html" => (K::Lessons, F::Html, "text/html; charset=utf-8"),
        _ => return failed(Error::not_found("export", file), &caller, &csrf),
    };
    let req = crate::proto::ExportRequest {
        kind: kind as i32,
        format: format as i32,
        experiment: q.experiment,
        include_above_official: q.include_above_official,
        ..Default::default()
    };
    match crate::export::produce(&d.manager, &d.transparency, &caller, req).await {
        Ok(data) => {
            let disposition = format!("attachment; filename=\"sandpit-{file}\"");
            (
                [
                    (axum::http::header::CONTENT_TYPE, content_type.to_string()),
                    (axum::http::header::CONTENT_DISPOSITION, disposition),
                ],
                data,
            )
                .into_response()
        }
        Err(e) => failed(e, &caller, &csrf),
    }
}
