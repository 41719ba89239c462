//! Lessons learnt, shared with the wider government community: the closed
//! experiments' outcomes, what worked, what did not and what can be reused,
//! as one publishable document (Markdown or HTML), per experiment or for a
//! period. Nothing above OFFICIAL is in it unless asked for explicitly; the
//! document says how many experiments were left out.

use std::time::SystemTime;

use sandpit_core::policy::Classification;
use sandpit_core::register::{Experiment, Status};
use sandpit_core::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Markdown,
    Html,
}

/// Which experiments' lessons to export.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only this one (which must be closed).
    pub experiment: Option<String>,
    /// Closed in `[since, until)`.
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    pub include_above_official: bool,
}

/// What went into a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen<'a> {
    pub experiments: Vec<&'a Experiment>,
    /// Closed experiments in the selection left out for being above OFFICIAL.
    pub withheld: usize,
}

/// The closed experiments `selection` asks for, oldest closed first.
pub fn choose<'a>(all: &'a [Experiment], selection: &Selection) -> Result<Chosen<'a>, Error> {
    if let Some(id) = &selection.experiment {
        let e = all.iter().find(|e| &e.id == id).ok_or_else(|| Error::not_found("experiment", id.as_str()))?;
        if e.status != Status::Closed {
            return Err(Error::FailedPrecondition(format!(
                "experiment '{id}' is {}: lessons are recorded when it is closed",
                e.status.as_str()
            )));
        }
    }
    let mut withheld = 0;
    let mut experiments: Vec<&Experiment> = all
        .iter()
        .filter(|e| e.status == Status::Closed)
        .filter(|e| selection.experiment.as_ref().is_none_or(|id| &e.id == id))
        .filter(|e| {
            let closed = e.closed_at.unwrap_or(e.created_at);
            selection.since.is_none_or(|t| closed >= t) && selection.until.is_none_or(|t| closed < t)
        })
        .filter(|e| {
            let shown = selection.include_above_official || e.classification <= Classification::Official;
            withheld += usize::from(!shown);
            shown
        })
        .collect();
    experiments.sort_by_key(|e| (e.closed_at, e.id.clone()));
    Ok(Chosen { experiments, withheld })
}

/// Text a caller wrote, made inert in Markdown: every character that could
/// make markup (emphasis, links, HTML, headings, tables) is escaped, and so
/// is a line's opening list or quote marker, so it renders as written.
fn md(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, line) in s.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let body = line.trim_start();
        out.push_str(&line[..line.len() - body.len()]);
        let digits = body.chars().take_while(char::is_ascii_digit).count();
        for (j, c) in body.chars().enumerate() {
            let opens_list =
                j == 0 && matches!(c, '-' | '+' | '=') || (j == digits && digits > 0 && matches!(c, '.' | ')'));
            if opens_list || "\\`*_{}[]<>#|~&!".contains(c) {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out
}

fn html(s: &str) -> String {
    crate::dashboard::html::esc(s)
}

fn date(t: Option<SystemTime>) -> String {
    t.map(super::day).unwrap_or_else(|| "-".into())
}

/// One experiment's lessons as (heading, facts, sections of (title, paragraphs or items)).
struct Entry {
    heading: String,
    facts: Vec<(&'static str, String)>,
    sections: Vec<(&'static str, Vec<String>, bool)>,
}

fn entry(e: &Experiment) -> Entry {
    let outcome = e.outcome.map(|o| o.as_str()).unwrap_or("-").to_string();
    let mut facts = vec![
        ("Experiment", e.id.clone()),
        ("Team", e.team.clone()),
        ("Classification", e.classification.to_string()),
        ("Outcome", outcome),
        ("Ran", format!("{} to {}", date(Some(e.created_at)), date(e.closed_at))),
    ];
    if !e.ai_tools.is_empty() {
        facts.push(("AI tools", e.ai_tools.join(", ")));
    }
    if !e.models.is_empty() {
        facts.push(("Models", e.models.join(", ")));
    }
    let paragraphs = |s: &str| s.split("\n\n").map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect();
    let mut sections =
        vec![("Purpose", paragraphs(&e.purpose), false), ("Lessons learnt", paragraphs(&e.lessons_learnt), false)];
    if !e.what_worked.trim().is_empty() {
        sections.push(("What worked", paragraphs(&e.what_worked), false));
    }
    if !e.what_did_not.trim().is_empty() {
        sections.push(("What did not work", paragraphs(&e.what_did_not), false));
    }
    if !e.artefacts.is_empty() {
        sections.push(("Reusable artefacts", e.artefacts.clone(), true));
    }
    Entry { heading: e.title.clone(), facts, sections }
}

/// The scope line: how many experiments, of which period, and how many left out.
fn scope(chosen: &Chosen<'_>, selection: &Selection) -> String {
    let period = match (selection.since, selection.until) {
        (None, None) => String::new(),
        (since, until) => format!(" closed from {} until {}", date(since), date(until)),
    };
    let n = chosen.experiments.len();
    let mut s = format!("{n} experiment{}{period}.", if n == 1 { "" } else { "s" });
    if chosen.withheld > 0 {
        s += &format!(" {} above OFFICIAL left out (include_above_official to include them).", chosen.withheld);
    }
    if selection.include_above_official {
        s += " Includes experiments above OFFICIAL: check before publishing.";
    }
    s
}

/// The document.
pub fn document(chosen: &Chosen<'_>, selection: &Selection, format: Format, now: SystemTime) -> Vec<u8> {
    let generated = sandpit_core::time::rfc3339(now);
    let scope = scope(chosen, selection);
    let entries: Vec<Entry> = chosen.experiments.iter().map(|e| entry(e)).collect();
    let out = match format {
        Format::Markdown => {
            let mut s = format!("# Lessons learnt\n\n{scope} Generated by Sandpit at {generated}.\n");
            for e in &entries {
                s += &format!("\n## {}\n\n", md(&e.heading));
                for (k, v) in &e.facts {
                    s += &format!("- **{k}:** {}\n", md(v));
                }
                for (title, items, list) in &e.sections {
                    s += &format!("\n### {title}\n\n");
                    for item in items {
                        if *list {
                            s += &format!("- {}\n", md(item));
                        } else {
                            s += &format!("{}\n\n", md(item));
                        }
                    }
                }
            }
            s
        }
        Format::Html => {
            let mut s = String::from(
                "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Lessons learnt</title>\n\
                 <style>body{font-family:system-ui,sans-serif;max-width:48rem;margin:2rem auto;padding:0 1rem;line-height:1.5}\
                 dt{font-weight:bold;float:left;clear:left;margin-right:.5rem}dd{margin:0 0 .2rem}</style>\n</head>\n<body>\n",
            );
            s += &format!("<h1>Lessons learnt</h1>\n<p>{} Generated by Sandpit at {generated}.</p>\n", html(&scope));
            for e in &entries {
                s += &format!("<article>\n<h2>{}</h2>\n<dl>\n", html(&e.heading));
                for (k, v) in &e.facts {
                    s += &format!("<dt>{k}:</dt><dd>{}</dd>\n", html(v));
                }
                s += "</dl>\n";
                for (title, items, list) in &e.sections {
                    s += &format!("<h3>{title}</h3>\n");
                    if *list {
                        s += "<ul>\n";
                        for item in items {
                            s += &format!("<li>{}</li>\n", html(item));
                        }
                        s += "</ul>\n";
                    } else {
                        for item in items {
                            s += &format!("<p>{}</p>\n", html(item));
                        }
                    }
                }
                s += "</article>\n";
            }
            s + "</body>\n</html>\n"
        }
    };
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandpit_core::register::{ExperimentOutcome, Lessons, NewExperiment};
    use std::time::Duration;

    fn closed(id: &str, c: Classification, title: &str, at: SystemTime) -> Experiment {
        let new = NewExperiment {
            title: title.into(),
            purpose: "Try it".into(),
            ai_tools: vec![],
            models: vec![],
            classification: c,
            datasets: vec![],
            risks: vec![],
            planned_end: None,
            senior_responsible_owner: String::new(),
            phase: String::new(),
            function: String::new(),
            region: String::new(),
        };
        let mut e = Experiment::new(id.into(), "amy", "methods", new, at).unwrap();
        let lessons = Lessons {
            summary: "Works on clean text".into(),
            what_worked: "Char n-grams".into(),
            what_did_not: "Rules".into(),
            artefacts: vec!["https://git.example/notebooks".into()],
        };
        e.close("amy", "methods", ExperimentOutcome::Succeeded, lessons, at).unwrap();
        e
    }

    #[test]
    fn markdown_escapes_markup_and_line_openers_only() {
        assert_eq!(md("a.b - c"), "a.b - c");
        assert_eq!(md("- item\n  1. two\n# h"), "\\- item\n  1\\. two\n\\# h");
        assert_eq!(md("[x](javascript:y) <b>*"), "\\[x\\](javascript:y) \\<b\\>\\*");
    }

    #[test]
    fn nothing_above_official_unless_asked_and_text_is_inert() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let all = vec![
            closed("exp-1", Classification::Official, "<script>x</script> # *coding*", t0),
            closed("exp-2", Classification::OfficialSensitive, "Linkage", t0 + Duration::from_secs(10)),
        ];
        let chosen = choose(&all, &Selection::default()).unwrap();
        assert_eq!((chosen.experiments.len(), chosen.withheld), (1, 1));
        let md = String::from_utf8(document(&chosen, &Selection::default(), Format::Markdown, t0)).unwrap();
        assert!(md.contains("1 experiment. 1 above OFFICIAL left out"), "{md}");
        assert!(md.contains("- **Experiment:** exp-1\n"), "{md}");
        assert!(md.contains("## \\<script\\>x\\</script\\> \\# \\*coding\\*"), "{md}");
        assert!(md.contains("### What did not work\n\nRules") && !md.contains("Linkage"), "{md}");
        let html = String::from_utf8(document(&chosen, &Selection::default(), Format::Html, t0)).unwrap();
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"), "{html}");
        let all_of_them = Selection { include_above_official: true, ..Default::default() };
        let chosen = choose(&all, &all_of_them).unwrap();
        assert_eq!((chosen.experiments.len(), chosen.withheld), (2, 0));
        let period =
            Selection { since: Some(t0 + Duration::from_secs(5)), include_above_official: true, ..Default::default() };
        assert_eq!(choose(&all, &period).unwrap().experiments[0].id, "exp-2");
        let one = Selection { experiment: Some("exp-2".into()), ..Default::default() };
        assert_eq!(choose(&all, &one).unwrap().withheld, 1);
    }
}
