//! Each experiment as an Algorithmic Transparency Recording Standard (v3.0)
//! record, under the standard's own section and field names. The field list
//! is `docs/atrs/atrs-v3-fields.json` (its source is named there), built
//! into the binary: the export is made from it, so it can hold no field the
//! standard lacks, and says which required ones are still empty.
//!
//! Where a field's value comes from: the register where it has the fact
//! (title, purpose, team, senior responsible owner, phase, function, region,
//! models, datasets, assessments, risks, dates); otherwise the experiment's
//! own transparency fields (`UpdateTransparency`, by the standard's name);
//! otherwise the host's defaults (`[governance.transparency]`, e.g. the
//! organisation's name and contact address).

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::{Map, Value};

use sandpit_core::register::{Experiment, Status};
use sandpit_core::Error;

#[derive(Debug, Deserialize)]
pub struct Standard {
    pub standard: String,
    pub version: String,
    pub source: String,
    pub sections: Vec<Section>,
}

#[derive(Debug, Deserialize)]
pub struct Section {
    pub tier: String,
    pub section: String,
    pub fields: Vec<Field>,
}

#[derive(Debug, Deserialize)]
pub struct Field {
    #[serde(rename = "ref")]
    pub reference: String,
    pub name: String,
    pub label: String,
    pub required: bool,
    pub multi: bool,
}

impl Section {
    /// The section's key in a JSON record: `metadata_and_title_information`,
    /// `tier_1_overview`, `tier_2_owner_and_responsibility`, ...
    pub fn key(&self) -> String {
        let title =
            if self.tier == "Metadata" { self.section.clone() } else { format!("{} {}", self.tier, self.section) };
        let mut key = String::new();
        for word in title.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()) {
            if !key.is_empty() {
                key.push('_');
            }
            key.push_str(&word.to_ascii_lowercase());
        }
        key
    }
}

static STANDARD: LazyLock<Standard> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../../../../docs/atrs/atrs-v3-fields.json"))
        .expect("docs/atrs/atrs-v3-fields.json is built in and parsed by a unit test")
});

pub fn standard() -> &'static Standard {
    &STANDARD
}

/// Fields whose value the register itself holds: not settable as
/// transparency fields (the first four are, through their own request fields).
const FROM_REGISTER: [&str; 16] = [
    "senior_responsible_owner",
    "phase",
    "function",
    "region",
    "standard_version",
    "date_updated",
    "date_archived",
    "title",
    "name",
    "description",
    "team",
    "models",
    "datasets",
    "source_data_name",
    "impact_assessment",
    "risks_and_mitigations",
];

/// Required by the standard's table, but only once it can hold a value.
const REQUIRED_ONCE_ARCHIVED: &str = "date_archived";

/// Whether `name` is an ATRS field an experiment (or the host's defaults)
/// may set by name: in the standard, and not one the register fills.
pub fn settable(name: &str) -> bool {
    !FROM_REGISTER.contains(&name) && STANDARD.sections.iter().flat_map(|s| &s.fields).any(|f| f.name == name)
}

/// One experiment's record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub experiment: String,
    /// `(section key, fields by name)` in the standard's order.
    pub sections: Vec<(String, Vec<(String, Value)>)>,
    /// Required fields still empty, as `ref name`.
    pub missing_required: Vec<String>,
}

/// The register's value for `name`, where it keeps one.
fn from_register(e: &Experiment, name: &str) -> Option<Value> {
    let s = |v: &str| Some(Value::String(v.to_string()));
    let list = |v: &[String]| Some(Value::Array(v.iter().cloned().map(Value::String).collect()));
    match name {
        "standard_version" => s(&STANDARD.version),
        "senior_responsible_owner" => s(&e.senior_responsible_owner),
        "phase" => s(&e.phase),
        "function" => s(&e.function),
        "region" => s(&e.region),
        "title" | "name" => s(&e.title),
        "description" => s(&e.purpose),
        "team" => s(&e.team),
        "models" => list(&e.models),
        "datasets" | "source_data_name" => list(&e.datasets),
        "date_updated" => Some(Value::Array(vec![Value::String(super::day(last_change(e)))])),
        "date_archived" => s(&e.closed_at.filter(|_| e.status == Status::Closed).map(super::day).unwrap_or_default()),
        "impact_assessment" => s(&e
            .assessments
            .iter()
            .map(|a| {
                let reference = if a.reference.is_empty() { String::new() } else { format!(", {}", a.reference) };
                format!("{}: {} ({}{reference})", a.kind.title(), a.status.as_str(), super::day(a.date))
            })
            .collect::<Vec<_>>()
            .join("; ")),
        "risks_and_mitigations" => s(&e
            .risks
            .iter()
            .map(|r| {
                let mitigation = if r.mitigation.is_empty() { "none recorded" } else { &r.mitigation };
                format!(
                    "{} (likelihood {}, impact {}, {}): mitigation: {mitigation}",
                    r.description, r.likelihood, r.impact, r.status
                )
            })
            .collect::<Vec<_>>()
            .join("; ")),
        _ => None,
    }
}

/// The latest time anything on the experiment's record changed.
fn last_change(e: &Experiment) -> SystemTime {
    let approvals = e.approvals.iter().map(|a| a.time);
    let risks = e.risks.iter().flat_map(|r| r.history.iter().map(|h| h.time));
    let assessments = e.assessments.iter().map(|a| a.recorded_at);
    std::iter::once(e.created_at)
        .chain(approvals)
        .chain(risks)
        .chain(assessments)
        .chain(e.closed_at)
        .max()
        .unwrap_or(e.created_at)
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::String(s) => s.trim().is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// `e` as an ATRS record; `defaults` are the host's transparency fields.
pub fn record(e: &Experiment, defaults: &BTreeMap<String, String>) -> Record {
    let mut sections = Vec::new();
    let mut missing_required = Vec::new();
    for section in &STANDARD.sections {
        let mut fields = Vec::new();
        for f in &section.fields {
            let value = from_register(e, &f.name).unwrap_or_else(|| {
                let text = e.transparency.get(&f.name).or_else(|| defaults.get(&f.name)).cloned().unwrap_or_default();
                if f.multi {
                    Value::Array(
                        text.split(';')
                            .map(str::trim)
                            .filter(|v| !v.is_empty())
                            .map(String::from)
                            .map(Value::String)
                            .collect(),
                    )
                } else {
                    Value::String(text)
                }
            });
            let needed = f.required && (f.name != REQUIRED_ONCE_ARCHIVED || e.status == Status::Closed);
            if needed && is_empty(&value) {
                missing_required.push(format!("{} {}", f.reference, f.name));
            }
            fields.push((f.name.clone(), value));
        }
        sections.push((section.key(), fields));
    }
    Record { experiment: e.id.clone(), sections, missing_required }
}

impl Record {
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("sandpit_experiment".into(), Value::String(self.experiment.clone()));
        out.insert("standard".into(), Value::String(format!("{} {}", STANDARD.standard, STANDARD.version)));
        for (key, fields) in &self.sections {
            let section: Map<String, Value> = fields.iter().cloned().collect();
            out.insert(key.clone(), Value::Object(section));
        }
        out.insert(
            "missing_required".into(),
            Value::Array(self.missing_required.iter().cloned().map(Value::String).collect()),
        );
        Value::Object(out)
    }
}

/// The records as one JSON document (an array).
pub fn json(records: &[Record]) -> Result<Vec<u8>, Error> {
    let doc = Value::Array(records.iter().map(Record::to_json).collect());
    let mut out = serde_json::to_vec_pretty(&doc).map_err(|e| Error::Internal(e.to_string()))?;
    out.push(b'\n');
    Ok(out)
}

/// The CSV header: `sandpit_experiment`, every field by the standard's name
/// (a name the standard uses twice, `phase`, is `phase_<ref>` the second
/// time), then `missing_required`.
pub fn csv_header() -> Vec<String> {
    let mut header = vec!["sandpit_experiment".to_string()];
    for f in STANDARD.sections.iter().flat_map(|s| &s.fields) {
        if header.contains(&f.name) {
            header.push(format!("{}_{}", f.name, f.reference));
        } else {
            header.push(f.name.clone());
        }
    }
    header.push("missing_required".into());
    header
}

/// The records as CSV, one row each; a multi-valued field's values joined by "; ".
pub fn csv(records: &[Record]) -> Result<Vec<u8>, Error> {
    let header = csv_header();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let rows = records.iter().map(|r| {
        let mut row = vec![r.experiment.clone()];
        for (_, value) in r.sections.iter().flat_map(|(_, fields)| fields) {
            row.push(match value {
                Value::String(s) => s.clone(),
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "),
                other => other.to_string(),
            });
        }
        row.push(r.missing_required.join("; "));
        row
    });
    super::csv(&header, rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandpit_core::policy::Classification;
    use sandpit_core::register::{Level, NewExperiment, Risk};

    fn experiment() -> Experiment {
        let new = NewExperiment {
            title: "Occupation coding".into(),
            purpose: "Suggest SOC codes for free-text answers".into(),
            ai_tools: vec!["scikit-learn".into()],
            models: vec!["tf-idf + logistic regression".into()],
            classification: Classification::Official,
            datasets: vec!["census-sample".into()],
            risks: vec![Risk::new(
                "misclassification".into(),
                Level::Medium,
                Level::High,
                "human review".into(),
                "amy".into(),
            )],
            planned_end: None,
            senior_responsible_owner: "Director of Methods".into(),
            phase: "Pre-deployment".into(),
            function: "General public services".into(),
            region: "England and Wales".into(),
        };
        Experiment::new("exp-1".into(), "amy", "methods", new, SystemTime::now()).unwrap()
    }

    #[test]
    fn the_built_in_field_list_is_the_standards_and_parses() {
        let s = standard();
        assert_eq!((s.version.as_str(), s.sections.len()), ("3.0", 7));
        assert!(s.source.contains("co-cddo/algorithmic-transparency-recording-standard"));
        let keys: Vec<String> = s.sections.iter().map(Section::key).collect();
        assert_eq!(keys[0], "metadata_and_title_information");
        assert_eq!(keys[2], "tier_2_owner_and_responsibility");
        for name in FROM_REGISTER {
            assert!(s.sections.iter().flat_map(|s| &s.fields).any(|f| f.name == name), "{name} is not in the standard");
        }
    }

    #[test]
    fn a_record_fills_what_the_register_knows_and_names_what_is_missing() {
        let mut e = experiment();
        let defaults: BTreeMap<String, String> =
            [("organisation_name".to_string(), "Statistics Body".to_string())].into_iter().collect();
        e.transparency.insert("benefit".into(), "Faster coding".into());
        e.transparency.insert("tags".into(), "coding; text".into());
        let r = record(&e, &defaults);
        let get = |section: &str, name: &str| {
            r.sections.iter().find(|(k, _)| k == section).unwrap().1.iter().find(|(n, _)| n == name).unwrap().1.clone()
        };
        assert_eq!(get("tier_1_overview", "name"), "Occupation coding");
        assert_eq!(get("tier_2_owner_and_responsibility", "senior_responsible_owner"), "Director of Methods");
        assert_eq!(get("metadata_and_title_information", "organisation_name"), "Statistics Body");
        assert_eq!(get("metadata_and_title_information", "tags"), serde_json::json!(["coding", "text"]));
        assert_eq!(get("tier_2_description_and_rationale", "benefit"), "Faster coding");
        let risks = get("tier_2_risks_mitigations_and_impact_assessments", "risks_and_mitigations");
        assert!(risks.as_str().unwrap().contains("mitigation: human review"), "{risks}");
        assert!(r.missing_required.contains(&"1.4 contact_email".to_string()), "{:?}", r.missing_required);
        assert!(!r.missing_required.iter().any(|m| m.ends_with(" benefit") || m.ends_with(" date_archived")));
        assert!(!settable("title") && settable("contact_email") && !settable("no_such_field"));
        let csv = String::from_utf8(csv(&[r]).unwrap()).unwrap();
        let header = csv.lines().next().unwrap();
        assert!(header.starts_with("sandpit_experiment,id,standard_version,"), "{header}");
        assert!(header.contains(",phase_2.4.1.2,"), "{header}");
    }
}
