//! Policy change impact on real traffic: requests with signed tokens through `/v1/authorize`
//! and Envoy's ext_authz, then a candidate set that tightens one rule and loosens another.
//! `portcullis replay` lists exactly the decisions that change (from the running server and
//! from its NDJSON), with `--fail-on` exit codes; a candidate that reads a claim no record
//! kept is `not replayable`; the same candidate as the shadow set marks the same decisions
//! live; a broken shadow set leaves the answers alone; no token is stored or printed.

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use portcullis::proto::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use portcullis::proto::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use portcullis::proto::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use serde_json::{Value, json};
use support::server::Server;
use support::{candidate, meme_game_token as token, shipped};

const BASE: &str = "https://localhost:8443/meme-game/api/v1";

/// Tightens the leaderboard (players only) and loosens meme editing (staff or editors).
fn tighten_and_loosen() -> tempfile::TempDir {
    candidate(&[
        (
            "    paths: [\"/leaderboard\"]\n",
            "    paths: [\"/leaderboard\"]\n    rules:\n      - description: only players\n        groups: { anyOf: [players] }\n",
        ),
        (
            "groups: { allOf: [staff, meme-editors] }",
            "groups: { anyOf: [staff, meme-editors] }",
        ),
    ])
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The decision id of a `/v1/authorize` call, and its status.
async fn authorize(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (String, u16) {
    let mut request = http()
        .get(server.http_url("/v1/authorize"))
        .header("X-Original-Method", method)
        .header("X-Original-URL", format!("{BASE}{path}"));
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let response = request.send().await.unwrap();
    let id = response.headers()["x-decision-id"]
        .to_str()
        .unwrap()
        .to_owned();
    (id, response.status().as_u16())
}

async fn grpc(server: &Server) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(server.grpc_url())
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap()
}

/// The decision id of an ext_authz Check, and its status (200 for an allow).
async fn check(server: &Server, method: &str, path: &str, token: &str) -> (String, u16) {
    let channel = grpc(server).await;
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                time: None,
                http: Some(HttpRequest {
                    method: method.into(),
                    scheme: "https".into(),
                    host: "localhost:8443".into(),
                    path: format!("/meme-game/api/v1{path}"),
                    headers: [("authorization".to_owned(), format!("Bearer {token}"))].into(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    };
    let response = AuthorizationClient::new(channel)
        .check(request)
        .await
        .unwrap()
        .into_inner();
    use portcullis::proto::envoy::service::auth::v3::check_response::HttpResponse;
    match response.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            let id = ok
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == "x-decision-id")
                .map(|h| h.value.clone())
                .unwrap();
            (id, 200)
        }
        Some(HttpResponse::DeniedResponse(d)) => {
            let body: Value = serde_json::from_str(&d.body).unwrap();
            (
                body["id"].as_str().unwrap().to_owned(),
                d.status.map_or(0, |s| s.code as u16),
            )
        }
        other => panic!("{other:?}"),
    }
}

/// The traffic of every test: (id, status) of each request, in this order: a viewer reads
/// the leaderboard (allowed; the candidate denies it), a player reads it (allowed by both),
/// staff edit a meme (denied; the candidate allows it), no token (401 for both), a viewer
/// browses memes (allowed by both).
struct Traffic {
    viewer_leaderboard: String,
    staff_edit: String,
    all: Vec<String>,
    tokens: Vec<String>,
}

async fn traffic(server: &Server) -> Traffic {
    let viewer = token("user.1", &["viewers"]);
    let player = token("user.2", &["players"]);
    let staff = token("user.3", &["staff"]);
    let a = check(server, "GET", "/leaderboard", &viewer).await;
    let b = authorize(server, "GET", "/leaderboard", Some(&player)).await;
    let c = check(server, "PUT", "/memes/9", &staff).await;
    let d = authorize(server, "GET", "/leaderboard", None).await;
    let e = authorize(server, "GET", "/memes", Some(&viewer)).await;
    assert_eq!(
        [a.1, b.1, c.1, d.1, e.1],
        [200, 200, 403, 401, 200],
        "the active set's answers"
    );
    Traffic {
        viewer_leaderboard: a.0.clone(),
        staff_edit: c.0.clone(),
        all: vec![a.0, b.0, c.0, d.0, e.0],
        tokens: vec![viewer, player, staff],
    }
}

fn replay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("replay")
        .args(args)
        .output()
        .unwrap()
}

fn shown(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_no_token(text: &str, tokens: &[String]) {
    for t in tokens {
        assert!(!text.contains(t.as_str()), "a token in:\n{text}");
    }
    assert!(!text.contains("eyJ"), "a token-shaped text in:\n{text}");
}

#[tokio::test]
async fn replay_lists_exactly_the_decisions_a_candidate_changes() {
    let server = Server::start(&shipped(), &[]);
    let t = traffic(&server).await;
    let cand = tighten_and_loosen();
    let cand_dir = cand.path().to_str().unwrap();
    let from = format!("http://{}", server.http);

    let out = replay(&["--policies", cand_dir, "--from", &from, "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut changed: Vec<(String, String)> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_owned(),
                c["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    changed.sort();
    let mut want = vec![
        (t.viewer_leaderboard.clone(), "allow-to-deny".to_owned()),
        (t.staff_edit.clone(), "deny-to-allow".to_owned()),
    ];
    want.sort();
    assert_eq!(changed, want, "{}", shown(&out));
    let tightened = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == t.viewer_leaderboard.as_str())
        .unwrap();
    assert_eq!(
        tightened["candidate"],
        json!({"outcome": "deny", "status": 403, "rule": "only players"})
    );
    assert_eq!(tightened["subject"], "user.1");
    assert_eq!(tightened["operation"], "leaderboard");
    assert_eq!(report["summary"]["total"]["replayed"], 5);
    assert_eq!(report["summary"]["total"]["unchanged"], 3);
    assert_eq!(report["notReplayable"], json!([]));
    assert_no_token(&shown(&out), &t.tokens);

    // The text report says the same for people.
    let text = replay(&["--policies", cand_dir, "--from", &from]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains(&format!("{} ", t.viewer_leaderboard))
            && stdout.contains("allow (200) → deny (403, rule \"only players\")")
            && stdout.contains("deny (403, rule \"staff who edit memes\") → allow (200)"),
        "{}",
        shown(&text)
    );

    // --fail-on: each kind found sets exit 1; not-replayable was not found.
    for (kinds, code) in [
        ("allow-to-deny", 1),
        ("deny-to-allow", 1),
        ("any", 1),
        ("not-replayable", 0),
    ] {
        let out = replay(&["--policies", cand_dir, "--from", &from, "--fail-on", kinds]);
        assert_eq!(
            out.status.code(),
            Some(code),
            "--fail-on {kinds}: {}",
            shown(&out)
        );
    }
    // The active set itself changes nothing.
    let same = replay(&[
        "--policies",
        shipped().to_str().unwrap(),
        "--from",
        &from,
        "--fail-on",
        "any",
    ]);
    assert_eq!(same.status.code(), Some(0), "{}", shown(&same));

    // The same from the decisions API's NDJSON, saved to a file.
    let ndjson = server.get_text("/v1/decisions?format=ndjson").await;
    assert_eq!(ndjson.lines().count(), t.all.len());
    assert_no_token(&ndjson, &t.tokens);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &ndjson).unwrap();
    let out = replay(&[
        "--policies",
        cand_dir,
        "--from",
        file.path().to_str().unwrap(),
        "--format",
        "json",
        "--fail-on",
        "deny-to-allow",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let from_file: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(from_file["changes"], report["changes"]);

    // Input that cannot be used: exit 2.
    std::fs::write(file.path(), "{not json\n").unwrap();
    let bad = replay(&[
        "--policies",
        cand_dir,
        "--from",
        file.path().to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(2), "{}", shown(&bad));
    let broken = candidate(&[("service: meme-game", "service: Meme Game")]);
    let bad = replay(&[
        "--policies",
        broken.path().to_str().unwrap(),
        "--from",
        &from,
    ]);
    assert_eq!(bad.status.code(), Some(2), "{}", shown(&bad));
}

#[tokio::test]
async fn a_candidate_reading_an_unrecorded_claim_is_not_replayable() {
    let server = Server::start(&shipped(), &[]);
    let t = traffic(&server).await;
    let cand = candidate(&[(
        "    paths: [\"/leaderboard\"]\n",
        "    paths: [\"/leaderboard\"]\n    rules:\n      - claim: { name: department, equals: games }\n",
    )]);
    let from = format!("http://{}", server.http);
    let args = [
        "--policies",
        cand.path().to_str().unwrap(),
        "--from",
        &from,
        "--format",
        "json",
    ];
    let out = replay(&args);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let unreplayable = report["notReplayable"].as_array().unwrap();
    // Every decision whose token the service verified; the one without a token replays.
    assert_eq!(unreplayable.len(), 4, "{}", shown(&out));
    assert!(
        unreplayable
            .iter()
            .all(|u| u["reason"].as_str().unwrap().contains("`department`")),
        "{}",
        shown(&out)
    );
    assert_eq!(report["changes"], json!([]));
    assert_eq!(report["summary"]["total"]["notReplayable"], 4);
    let any = replay(&[&args[..], &["--fail-on", "any"]].concat());
    assert_eq!(any.status.code(), Some(0), "{}", shown(&any));
    let strict = replay(&[&args[..], &["--fail-on", "not-replayable"]].concat());
    assert_eq!(strict.status.code(), Some(1), "{}", shown(&strict));
    assert_no_token(&shown(&out), &t.tokens);
}

#[tokio::test]
async fn the_candidate_as_shadow_set_marks_the_same_decisions_live() {
    let cand = tighten_and_loosen();
    let server = Server::start(
        &shipped(),
        &["--shadow-policies", cand.path().to_str().unwrap()],
    );
    let t = traffic(&server).await;

    let listed: Value =
        serde_json::from_str(&server.get_text("/v1/decisions?shadow=differs").await).unwrap();
    let mut ids: Vec<&str> = listed["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want = vec![t.viewer_leaderboard.as_str(), t.staff_edit.as_str()];
    want.sort();
    assert_eq!(ids, want, "{listed:#}");
    let viewer: Value = serde_json::from_str(
        &server
            .get_text(&format!("/v1/decisions/{}", t.viewer_leaderboard))
            .await,
    )
    .unwrap();
    assert_eq!(viewer["outcome"], "allow");
    assert_eq!(viewer["shadow"]["outcome"], "deny");
    assert_eq!(viewer["shadow"]["status"], 403);
    assert_eq!(viewer["shadow"]["rule"], "only players");
    assert!(!viewer["shadow"]["trace"].as_array().unwrap().is_empty());
    assert_ne!(viewer["shadow"]["policyRevision"], viewer["policyRevision"]);

    // The gRPC decisions API filters the same way.
    let channel = grpc(&server).await;
    let listed = portcullis::proto::decision_service_client::DecisionServiceClient::new(channel)
        .list_decisions(portcullis::proto::ListDecisionsRequest {
            shadow_differs: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut grpc_ids: Vec<&str> = listed.decisions.iter().map(|d| d.id.as_str()).collect();
    grpc_ids.sort();
    assert_eq!(grpc_ids, want);
    assert!(
        listed
            .decisions
            .iter()
            .all(|d| d.shadow.as_ref().is_some_and(|s| !s.trace.is_empty()))
    );

    let metrics = server.get_text("/metrics").await;
    let count = |active: &str, shadow: &str, differs: bool| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("portcullis_shadow_decisions_total{")
                    && l.contains(&format!("active=\"{active}\""))
                    && l.contains(&format!("shadow=\"{shadow}\""))
                    && l.contains(&format!("differs=\"{differs}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map_or(0.0, |v| v.parse::<f64>().unwrap())
    };
    assert_eq!(count("allow", "deny", true), 1.0, "{metrics}");
    assert_eq!(count("deny", "allow", true), 1.0, "{metrics}");
    assert_eq!(
        count("allow", "allow", false) + count("deny", "deny", false),
        3.0,
        "{metrics}"
    );
    let all = server.get_text("/v1/decisions?format=ndjson").await;
    assert_no_token(&all, &t.tokens);
    assert_no_token(&server.log(), &t.tokens);
}

#[tokio::test]
async fn a_broken_shadow_set_leaves_the_active_answers_alone() {
    let broken = candidate(&[("service: meme-game", "service: Meme Game")]);
    let server = Server::start(
        &shipped(),
        &["--shadow-policies", broken.path().to_str().unwrap()],
    );
    // The same answers as without a shadow set (checked inside), none marked.
    traffic(&server).await;
    let listed: Value =
        serde_json::from_str(&server.get_text("/v1/decisions?shadow=differs").await).unwrap();
    assert_eq!(listed["decisions"], json!([]));
    server.wait_for_log("shadow policies do not compile").await;
    assert!(
        !server
            .get_text("/metrics")
            .await
            .contains("portcullis_shadow_decisions_total{")
    );

    // Fixed on disk, it is picked up like the active set, and then marks decisions.
    let fixed = tighten_and_loosen();
    for name in ["meme-game.yaml", "partners.yaml"] {
        std::fs::copy(fixed.path().join(name), broken.path().join(name)).unwrap();
    }
    server.wait_for_log("shadow policies loaded").await;
    let viewer = token("user.1", &["viewers"]);
    let (id, status) = check(&server, "GET", "/leaderboard", &viewer).await;
    assert_eq!(status, 200, "the answer is the active set's");
    let listed: Value =
        serde_json::from_str(&server.get_text("/v1/decisions?shadow=differs").await).unwrap();
    assert_eq!(listed["decisions"][0]["id"], id.as_str(), "{listed:#}");
}

#[tokio::test]
async fn replay_from_a_server_pages_through_more_decisions_than_one_page_holds() {
    let server = Server::start(&shipped(), &[]);
    // Without a token: cheap to decide, and each one a decision of its own.
    const N: usize = 2_345;
    let client = http();
    for i in 0..N {
        let response = client
            .get(server.http_url("/v1/authorize"))
            .header("X-Original-Method", "GET")
            .header("X-Original-URL", format!("{BASE}/memes/{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    let from = format!("http://{}", server.http);
    let cand = tighten_and_loosen();
    let out = replay(&[
        "--policies",
        cand.path().to_str().unwrap(),
        "--from",
        &from,
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["summary"]["total"]["replayed"], N,
        "every decision once"
    );
    assert_eq!(report["summary"]["total"]["unchanged"], N);
}
