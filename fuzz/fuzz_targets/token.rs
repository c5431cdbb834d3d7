//! Bearer tokens: any bytes as a token are refused with 400 or 401, never allowed, never a
//! panic (the shipped example policies).
#![no_main]

use std::sync::OnceLock;
use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use portcullis::{DecisionRequest, Engine, PolicyOptions, PolicySet};

fn policies() -> &'static PolicySet {
    static SET: OnceLock<PolicySet> = OnceLock::new();
    SET.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        portcullis::load_dir(&dir, &PolicyOptions::default()).expect("the example policies compile")
    })
}

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let authorization = format!("Bearer {token}");
    let engine = Engine::new(16);
    let decision = engine.decide(
        policies(),
        &DecisionRequest {
            method: "GET",
            url: "https://localhost:8443/meme-game/api/v1/leaderboard",
            headers: &[("authorization", &authorization)],
            client: None,
            client_cert: None,
        },
        SystemTime::now(),
    );
    assert!(decision.status == 400 || decision.status == 401, "{}", decision.status);
});
