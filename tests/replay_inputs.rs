//! A recorded decision's inputs decide it again: for every case of the shipped and fixture
//! test suites, the decision rebuilt from its stored record and replayed on the same policy
//! set equals the original (its id, time and duration aside, and the token entry saying the
//! token was replayed rather than verified); and the record holds no token.

use std::path::Path;
use std::time::SystemTime;

use portcullis::decision::{Decision, Engine, Rebuild, Step};
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
    let mut rebuilt = 0;
    for case in &report.cases {
        let Some(original) = &case.decision else {
            continue;
        };
        assert!(original.inputs.is_some(), "{}: no inputs", case.name);
        // Decided again with the same set from what an inputs-only record keeps, the
        // decision must come back whole (tests/cases.rs checks the same on every case file).
        if let Some(how) = Rebuild::of(original) {
            let again = engine
                .rebuild(&policies, &support::rebuild_skeleton(original), how)
                .unwrap_or_else(|e| panic!("{}: not rebuilt: {e}", case.name));
            assert_eq!(&again, original, "{}: rebuilt differently", case.name);
            rebuilt += 1;
        }
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
    assert!(
        rebuilt * 2 >= replayed,
        "only {rebuilt} of {replayed} rebuilt"
    );
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

mod support;

/// The fixture policies, with `from` replaced by `to` in `others.yaml` (the `bound` and
/// `bindable` services), in a temporary directory.
fn fixture_candidate(edits: &[(&str, &str)]) -> (tempfile::TempDir, portcullis::PolicySet) {
    let dir = tempfile::tempdir().unwrap();
    let from = support::fixtures().join("policies");
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    for key in std::fs::read_dir(from.join("keys")).unwrap() {
        let key = key.unwrap().path();
        std::fs::copy(&key, dir.path().join("keys").join(key.file_name().unwrap())).unwrap();
    }
    for entry in std::fs::read_dir(&from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let file = dir.path().join("others.yaml");
    let mut text = std::fs::read_to_string(&file).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "others.yaml has no `{from}`");
        text = text.replacen(from, to, 1);
    }
    std::fs::write(&file, text).unwrap();
    let set = load_dir(dir.path(), &Default::default()).expect("the candidate loads");
    (dir, set)
}

#[test]
fn binding_checks_replay_as_recorded_or_say_why_they_cannot() {
    use base64::Engine as _;
    use serde_json::json;
    let sha256 = |b: &[u8]| {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b)
            .as_ref()
            .to_vec()
    };
    let now = support::unix_now();
    let claims = |aud: &str, cnf: Option<serde_json::Value>| {
        let mut c = support::app_claims(now);
        c["aud"] = json!(aud);
        if let Some(cnf) = cnf {
            c["cnf"] = cnf;
        }
        support::rs256(&c)
    };
    let mine = rcgen::generate_simple_self_signed(vec!["mine".into()]).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["other".into()]).unwrap();
    let cert_bound = claims(
        "bound",
        Some(json!({"x5t#S256": support::b64(&sha256(mine.cert.der()))})),
    );
    let other_der = base64::engine::general_purpose::STANDARD.encode(other.cert.der());
    let unbound = claims("bindable", None);

    let policies = support::policies();
    let engine = Engine::default();
    let store = TraceStore::new(100);
    let decide = |url: &str, token: &str, cert: Option<&str>| {
        let authorization = format!("Bearer {token}");
        let decision = engine.decide(
            policies,
            &portcullis::DecisionRequest {
                method: "GET",
                url,
                headers: &[("authorization", &authorization)],
                client: None,
                client_cert: cert,
            },
            SystemTime::now(),
        );
        store.record(&decision).decision()
    };
    let mismatch = decide("https://bound.test/api/x", &cert_bound, Some(&other_der));
    assert_eq!(mismatch.detail_code(), Some("CERTIFICATE_MISMATCH"));
    let json = serde_json::to_string(&mismatch).unwrap();
    assert!(
        !json.contains(&other_der[..40]),
        "the certificate in the record"
    );
    let passed = decide("https://bindable.test/api/x", &unbound, None);
    assert!(passed.is_allowed());

    // The same settings: as it was.
    let again = engine.replay(policies, &mismatch).unwrap();
    assert_eq!(again.detail_code(), Some("CERTIFICATE_MISMATCH"));
    assert_eq!(
        comparable(&engine.replay(policies, &passed).unwrap()),
        comparable(&passed)
    );
    // `required` instead of `allowed`: the unbound token is refused, the bound one checked alike.
    let (_dir, stricter) = fixture_candidate(&[("binding: allowed", "binding: required")]);
    assert_eq!(
        engine.replay(&stricter, &passed).unwrap().detail_code(),
        Some("BINDING_REQUIRED")
    );
    // `none`: `cnf` ignored, the mismatched certificate no longer matters.
    let (_dir, ignoring) = fixture_candidate(&[("binding: required", "binding: none")]);
    assert!(engine.replay(&ignoring, &mismatch).unwrap().is_allowed());
    // Another DPoP window changes nothing for a certificate-bound token...
    let (_dir, window) = fixture_candidate(&[("window: 30s", "window: 90s")]);
    let same = engine.replay(&window, &mismatch).unwrap();
    assert_eq!(same.detail_code(), Some("CERTIFICATE_MISMATCH"));
    // ...but a token checked under `none` and now `required` would need the certificate.
    let app_bound = claims(
        "app",
        Some(json!({"x5t#S256": support::b64(&sha256(mine.cert.der()))})),
    );
    let unchecked = decide("https://api.test/app/v1/items/1", &app_bound, None);
    assert!(unchecked.is_allowed());
    let (_dir, app_required) = {
        let (copy, _) = fixture_candidate(&[]);
        let app = copy.path().join("app.yaml");
        let text = std::fs::read_to_string(&app).unwrap().replacen(
            "  leeway: 30s\n",
            "  leeway: 30s\n  binding: required\n",
            1,
        );
        std::fs::write(&app, text).unwrap();
        let set = load_dir(copy.path(), &Default::default()).unwrap();
        (copy, set)
    };
    let refused = engine.replay(&app_required, &unchecked).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("certificate and DPoP proof are not kept"),
        "{refused}"
    );
}
