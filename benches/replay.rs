//! `portcullis replay` on 100,000 recorded decisions (issue 19: ≤ 2 s on 2 cores), and what
//! the replay inputs add to a record.
//!
//! Run with `cargo bench --bench replay`. It decides a mix of requests on the shipped
//! policies (allowed, denied by a rule, no token, expired token, no service, rate limited),
//! keeps them in a trace store as the server does, writes the records as the decisions API's
//! NDJSON, then times the release binary replaying them against a candidate that tightens
//! one rule (`REPLAY_RUNS` [3] runs; wall time and the CPU the process used). It prints the
//! store's bytes per record with and without replay inputs on the same mix.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::trace::TraceStore;
use portcullis::{Decision, DecisionRequest, Engine};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DECISIONS: usize = 100_000;
const BASE: &str = "https://localhost:8443/meme-game/api/v1";

fn token(key: &EncodingKey, sub: &str, groups: &[&str], exp_in: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = serde_json::json!({
        "iss": "https://auth.example.com", "aud": "meme-game", "sub": sub,
        "client_id": "meme-game-web", "groups": groups, "scope": "answers:write memes:read",
        "iat": now - 60, "exp": now + exp_in,
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("meme-game-dev-rsa-1".into());
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

/// The recorded decisions, as the decisions API serves them.
fn recorded() -> Vec<Decision> {
    let policies = portcullis::load_dir(Path::new("policies"), &Default::default()).unwrap();
    let pem = std::fs::read("policies/keys/meme-game.dev-key.pem").unwrap();
    let key = EncodingKey::from_rsa_pem(&pem).unwrap();
    let bearer = |t: String| format!("Bearer {t}");
    let player = bearer(token(&key, "user.0", &["players"], 3600));
    let viewer = bearer(token(&key, "user.1", &["viewers"], 3600));
    let expired = bearer(token(&key, "user.2", &["players"], -3600));
    let kinds: Vec<(&str, String, Option<&str>)> = vec![
        (
            "POST",
            format!("{BASE}/users/user.0/answers"),
            Some(&player),
        ),
        ("GET", format!("{BASE}/leaderboard"), Some(&viewer)),
        (
            "POST",
            format!("{BASE}/users/user.0/answers"),
            Some(&viewer),
        ),
        ("GET", format!("{BASE}/memes/7"), Some(&viewer)),
        ("GET", format!("{BASE}/leaderboard"), None),
        ("GET", format!("{BASE}/leaderboard"), Some(&expired)),
        ("GET", "https://nowhere.example.com/x".to_owned(), None),
        // 30 a minute are allowed: most of these are rate limited.
        (
            "POST",
            format!("{BASE}/users/user.0/reactions"),
            Some(&player),
        ),
    ];
    let engine = Engine::default();
    let store = TraceStore::new(DECISIONS);
    let bare = TraceStore::new(DECISIONS);
    let mut decisions = Vec::with_capacity(DECISIONS);
    let now = SystemTime::now();
    for i in 0..DECISIONS {
        let (method, url, authorization) = &kinds[i % kinds.len()];
        let headers: Vec<(&str, &str)> = authorization
            .iter()
            .map(|a| ("authorization", *a))
            .collect();
        let request = DecisionRequest {
            method,
            url,
            headers: &headers,
            client: Some("203.0.113.9".parse().unwrap()),
        };
        let mut decision =
            engine.decide(&policies, &request, now + Duration::from_micros(i as u64));
        decisions.push(store.record(&decision).decision());
        decision.inputs = None;
        bare.record(&decision);
    }
    let with_inputs = store.approx_bytes() as f64 / store.len() as f64;
    let without = bare.approx_bytes() as f64 / bare.len() as f64;
    println!(
        "store bytes per record on this mix: {with_inputs:.0} with replay inputs, {without:.0} without (+{:.0})",
        with_inputs - without
    );
    decisions
}

/// CPU time (user + system) of the children waited for so far.
fn children_cpu() -> Duration {
    // SAFETY: getrusage writes the struct it is given; zeroed is a valid value of it.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let decisions = recorded();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("decisions.ndjson");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    for d in &decisions {
        serde_json::to_writer(&mut out, d).unwrap();
        out.write_all(b"\n").unwrap();
    }
    out.flush().unwrap();
    drop(out);
    let size = std::fs::metadata(&file).unwrap().len();
    println!(
        "{} recorded decisions, {:.1} MiB of NDJSON ({:.0} bytes each)",
        decisions.len(),
        size as f64 / (1024.0 * 1024.0),
        size as f64 / decisions.len() as f64
    );

    // The candidate: the leaderboard for players only.
    let candidate = dir.path().join("candidate");
    std::fs::create_dir_all(candidate.join("keys")).unwrap();
    for entry in std::fs::read_dir("policies/keys").unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(
            &path,
            candidate.join("keys").join(path.file_name().unwrap()),
        )
        .unwrap();
    }
    std::fs::copy("policies/partners.yaml", candidate.join("partners.yaml")).unwrap();
    let meme = std::fs::read_to_string("policies/meme-game.yaml").unwrap().replacen(
        "    paths: [\"/leaderboard\"]\n",
        "    paths: [\"/leaderboard\"]\n    rules:\n      - description: only players\n        groups: { anyOf: [players] }\n",
        1,
    );
    std::fs::write(candidate.join("meme-game.yaml"), meme).unwrap();

    let runs: usize = std::env::var("REPLAY_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let mut walls = Vec::new();
    for run in 1..=runs {
        let cpu_before = children_cpu();
        let started = Instant::now();
        let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["replay", "--policies"])
            .arg(&candidate)
            .arg("--from")
            .arg(&file)
            .args(["--format", "json"])
            .output()
            .unwrap();
        let wall = started.elapsed();
        let cpu = children_cpu() - cpu_before;
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let total = &report["summary"]["total"];
        println!(
            "run {run}: {:.2} s wall, {:.2} s CPU; {} replayed, {} changed, {} not replayable",
            wall.as_secs_f64(),
            cpu.as_secs_f64(),
            total["replayed"],
            report["changes"].as_array().map_or(0, Vec::len),
            total["notReplayable"],
        );
        walls.push(wall);
    }
    walls.sort();
    let median = walls[walls.len() / 2];
    println!(
        "median {:.2} s for {} decisions (issue 19 target: ≤ 2 s) → {}",
        median.as_secs_f64(),
        decisions.len(),
        if median <= Duration::from_secs(2) {
            "met"
        } else {
            "MISSED"
        }
    );
}
