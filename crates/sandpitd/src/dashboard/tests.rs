//! The pure parts of the dashboard. The server, sign-in and pages are
//! tested against the real daemon in `tests/it/dashboard.rs` (and in a
//! browser by `clients/python/tests/test_dashboard.py`).

use super::*;

#[test]
fn only_local_paths_are_followed_after_sign_in() {
    assert_eq!(local_path(Some("/audit?actor=ada")), "/audit?actor=ada");
    for bad in ["//evil.example/", "https://evil.example/", "/\\evil.example", "audit", ""] {
        assert_eq!(local_path(Some(bad)), "/active", "{bad}");
    }
    assert_eq!(local_path(None), "/active");
}

#[test]
fn the_register_search_matches_every_word_anywhere() {
    use sandpit_core::register::{Experiment, NewExperiment};
    let new = NewExperiment {
        title: "Census linkage".into(),
        purpose: "Match records".into(),
        ai_tools: vec![],
        models: vec![],
        classification: sandpit_core::policy::Classification::Official,
        datasets: vec![],
        risks: vec![],
        planned_end: None,
        senior_responsible_owner: String::new(),
        phase: String::new(),
        function: String::new(),
        region: String::new(),
    };
    let mut e = Experiment::new("exp-0123456789".into(), "alice", "team-a", new, std::time::SystemTime::now()).unwrap();
    e.lessons_learnt = "Blocking on postcode halves the comparisons".into();
    assert!(pages::matches(&e, ""));
    assert!(pages::matches(&e, "census POSTCODE"));
    assert!(pages::matches(&e, "team-a exp-0123"));
    assert!(!pages::matches(&e, "census wales"));
}
