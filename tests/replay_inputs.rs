//! A recorded decision's inputs decide it again: for every case of the shipped and fixture
//! test suites, the decision rebuilt from its stored record and replayed on the same policy
//! set equals the original (its id, time and duration aside, and the token entry saying the
//! token was replayed rather than verified); and the record holds no token.

use std::path::Path;
use std::time::SystemTime;

use portcullis::decision::{Decision, Engine, Step};
use portcullis::policy::load_dir;
use portcullis::suite::{load_suites, run};
use portcullis::trace::TraceStore;

/// What replay must reproduce: the decision without what differs between two runs.
fn comparable(d: &Decision) -> Decision {
    let mut d = d.clone();
    let id = std::mem::take(&mut d.id);
    d.time.clear();
    d.duration_micros = 0;
    d.inputs = None;
    d.audit = d.audit.replace(&id, "ID");
    for (_, value) in &mut d.headers.0 {
        *value = value.replace(&id, "ID");
    }
    if let Some(body) = &mut d.body {
        body.id.clear();
        for detail in &mut body.details {
            detail.message = detail.message.replace(&id, "ID");
        }
    }
    for entry in &mut d.trace {
        if entry.step == Step::Token
            && let Some(detail) = &mut entry.detail
        {
            *detail = detail.replace(" (cached)", "").replace(" (replayed)", "");
        }
        // The rate-limit entry says how many seconds the window has left.
        if entry.rule.as_deref() == Some("rateLimit")
            && let Some(detail) = &mut entry.detail
            && let Some(at) = detail.find("; the window ends")
        {
            detail.truncate(at);
        }
    }
    d.headers.0.retain(|(name, _)| name != "retry-after");
    d
}

fn replay_every_case(policies_dir: &Path, suites_path: &Path) -> usize {
    let policies = load_dir(policies_dir, &Default::default()).expect("policies load");
    let suites = load_suites(suites_path).expect("suites load");
    let report = run(&policies, &suites, SystemTime::now(), None);
    assert!(!report.cases.is_empty());
    let store = TraceStore::new(10_000);
    let engine = Engine::default();
    let mut replayed = 0;
    for case in &report.cases {
        let Some(original) = &case.decision else {
            continue;
        };
        assert!(original.inputs.is_some(), "{}: no inputs", case.name);
        let record = store.record(original);
        let rebuilt = record.decision();
        let json = serde_json::to_string(&rebuilt).unwrap();
        assert!(
            !json.contains("eyJ"),
            "{}: a token-shaped text in the record: {json}",
            case.name
        );
        let again = engine
            .replay(&policies, &rebuilt)
            .unwrap_or_else(|e| panic!("{}: not replayable: {e}", case.name));
        assert_eq!(
            comparable(&again),
            comparable(original),
            "{}: the replayed decision differs",
            case.name
        );
        replayed += 1;
    }
    replayed
}

#[test]
fn every_shipped_suite_case_replays_to_the_same_decision() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let n = replay_every_case(&root.join("policies"), &root.join("policies"));
    assert!(n >= 20, "only {n} cases replayed");
}

#[test]
fn every_fixture_suite_case_replays_to_the_same_decision() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/fixtures/suites");
    let n = replay_every_case(&dir, &dir.join("shop.test.yaml"));
    assert!(n >= 5, "only {n} cases replayed");
}
