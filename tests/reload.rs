//! Hot reload against the real server: edits under load, invalid edits, deleted files,
//! symlink swaps, rotated key files and SIGHUP.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use support::server::Server;

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An RS256 token without `kid` for the `probe` services, signed by `key`.
fn token(key: &str, claims: Value) -> String {
    let mut all = json!({"iss": "https://issuer.test", "aud": "probe", "sub": "user.1", "exp": unix_now() + 3600});
    for (k, v) in claims.as_object().unwrap() {
        all[k] = v.clone();
    }
    support::jws(
        &json!({"alg": "RS256"}),
        &all,
        Some((key, Algorithm::RS256)),
    )
}

/// A policy directory holding `probe.yaml` at revision 0 (host `probe.test`), and that
/// file's path.
fn probe_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    policy_dir(dir.path());
    let file = dir.path().join("probe.yaml");
    std::fs::write(&file, probe_policy(0, "probe.test")).unwrap();
    (dir, file)
}

/// A policy directory with the fixture key sets under `keys/`.
fn policy_dir(at: &Path) {
    std::fs::create_dir_all(at.join("keys")).unwrap();
    for entry in std::fs::read_dir(support::fixtures().join("policies/keys")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, at.join("keys").join(path.file_name().unwrap())).unwrap();
    }
}

/// Service `probe` as of edit `k`: even edits allow (the token has `even: yes`) with
/// `x-edit: k`, odd edits deny with a rule named `edit-k`.
fn probe_policy(k: usize, host: &str) -> String {
    let parity = if k.is_multiple_of(2) { "even" } else { "odd" };
    format!(
        "service: probe
baseUrls: [\"https://{host}\"]
token:
  issuer: https://issuer.test
  audiences: [probe]
  algorithms: [RS256]
  jwks: {{ file: keys/single.jwks.json }}
upstreamHeaders:
  x-edit: \"{k}\"
operations:
  - name: probe
    methods: [GET]
    paths: [\"/probe\"]
    rules:
      - description: edit-{k}
        claim: {{ name: {parity}, equals: \"yes\" }}
"
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn authorize(
    http: &reqwest::Client,
    server: &Server,
    url: &str,
    token: &str,
) -> reqwest::Response {
    http.get(server.http_url("/v1/authorize"))
        .header("X-Original-URL", url)
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .expect("the server answers")
}

async fn readyz(http: &reqwest::Client, server: &Server) -> Value {
    http.get(server.http_url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls `check` every 50 ms until it holds; fails after 10 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The edit a `probe` answer was decided with, and whether it was allowed.
fn edit_of(status: u16, headers: &reqwest::header::HeaderMap, body: &str) -> Option<(usize, bool)> {
    match status {
        200 => headers
            .get("x-edit")?
            .to_str()
            .ok()?
            .parse()
            .ok()
            .map(|k| (k, true)),
        403 => {
            let body: Value = serde_json::from_str(body).ok()?;
            let message = body["details"][0]["message"].as_str()?;
            message
                .strip_prefix("edit-")?
                .split(':')
                .next()?
                .parse()
                .ok()
                .map(|k| (k, false))
        }
        _ => None,
    }
}

#[tokio::test]
async fn fifty_edits_under_load_fail_no_request_and_never_mix_revisions() {
    let (dir, file) = probe_dir();
    let server = Server::start(dir.path(), &[]);
    let http = client();
    let token = token("rsa-a", json!({"even": "yes"}));

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (http, url, token, stop) = (
            client(),
            server.http_url("/v1/authorize"),
            token.clone(),
            stop.clone(),
        );
        clients.push(tokio::spawn(async move {
            let (mut answers, mut last_edit, mut problems) = (0u64, 0usize, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let response = http
                    .get(&url)
                    .header("X-Original-URL", "https://probe.test/probe")
                    .header("Authorization", format!("Bearer {token}"))
                    .send()
                    .await;
                let response = match response {
                    Ok(r) => r,
                    Err(e) => {
                        problems.push(format!("transport error: {e}"));
                        continue;
                    }
                };
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let body = response.text().await.unwrap_or_default();
                match edit_of(status, &headers, &body) {
                    Some((k, allowed)) if allowed == k.is_multiple_of(2) && k >= last_edit => {
                        last_edit = k
                    }
                    other => problems.push(format!(
                        "status {status}, edit {other:?} after edit {last_edit}: {body}"
                    )),
                }
                answers += 1;
            }
            (answers, problems)
        }));
    }

    let mut revisions = vec![
        readyz(&http, &server).await["policyRevision"]
            .as_str()
            .unwrap()
            .to_owned(),
    ];
    for k in 1..=50 {
        std::fs::write(&file, probe_policy(k, "probe.test")).unwrap();
        let before = revisions.last().unwrap().clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        let now = loop {
            let now = readyz(&http, &server).await["policyRevision"]
                .as_str()
                .unwrap()
                .to_owned();
            if now != before {
                break now;
            }
            assert!(
                Instant::now() < deadline,
                "edit {k} did not take effect within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        revisions.push(now);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let (answers, problems) = c.await.unwrap();
        assert!(
            problems.is_empty(),
            "{} bad answers, e.g. {:?}",
            problems.len(),
            &problems[..problems.len().min(5)]
        );
        total += answers;
    }
    assert!(total > 100, "only {total} answers during the edits");
    let distinct: std::collections::HashSet<_> = revisions.iter().collect();
    assert_eq!(distinct.len(), 51, "every edit is a new revision");

    // Each recorded decision's revision is the one whose content decided it.
    let listed: Value = http
        .get(server.http_url("/v1/decisions?limit=1000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut edit_by_revision: HashMap<String, usize> = HashMap::new();
    for d in listed["decisions"].as_array().unwrap() {
        let k = match d["status"].as_u64() {
            Some(200) => d["upstreamHeaders"]["x-edit"]
                .as_str()
                .unwrap()
                .parse::<usize>()
                .unwrap(),
            _ => d["trace"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["decisive"] == true)
                .unwrap()["rule"]
                .as_str()
                .unwrap()
                .trim_start_matches("edit-")
                .parse()
                .unwrap(),
        };
        let revision = d["policyRevision"].as_str().unwrap().to_owned();
        assert_eq!(
            revisions.iter().position(|r| *r == revision),
            Some(k),
            "decision {} mixes revisions",
            d["id"]
        );
        assert_eq!(*edit_by_revision.entry(revision).or_insert(k), k);
    }
}

#[tokio::test]
async fn an_invalid_edit_keeps_the_last_good_set_and_says_why() {
    let (dir, file) = probe_dir();
    let server = Server::start(dir.path(), &[]);
    let http = client();
    let token = token("rsa-a", json!({"even": "yes"}));
    let good = readyz(&http, &server).await["policyRevision"]
        .as_str()
        .unwrap()
        .to_owned();

    std::fs::write(
        &file,
        probe_policy(2, "probe.test").replace("methods: [GET]", "methods: [GET]\n    pathz: []"),
    )
    .unwrap();
    eventually("the failed reload is reported", || async {
        !readyz(&http, &server).await["failedReload"].is_null()
    })
    .await;
    let ready = http.get(server.http_url("/readyz")).send().await.unwrap();
    assert_eq!(
        ready.status(),
        200,
        "a failed reload does not make the server unready"
    );
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["policyRevision"], good.as_str());
    let error = ready["failedReload"]["errors"][0].as_str().unwrap();
    assert!(
        error.contains("probe.yaml:") && error.contains("pathz"),
        "{error}"
    );
    assert_ne!(ready["failedReload"]["revision"], good.as_str());

    // Still decided by edit 0.
    let answer = authorize(&http, &server, "https://probe.test/probe", &token).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-edit"], "0");
    let metrics = server.get_text("/metrics").await;
    assert!(
        metrics.contains(r#"portcullis_policy_reloads_total{result="failure"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_policy_last_reload_success_timestamp_seconds"),
        "{metrics}"
    );
    let mut grpc = portcullis::proto::decision_service_client::DecisionServiceClient::connect(
        server.grpc_url(),
    )
    .await
    .unwrap();
    let services = grpc
        .list_services(portcullis::proto::ListServicesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(services.policy_revision, good);
    assert!(
        services.last_error.contains("pathz"),
        "{}",
        services.last_error
    );
    server.wait_for_log("policy reload failed").await;

    // Fixing the file clears the failure.
    std::fs::write(&file, probe_policy(2, "probe.test")).unwrap();
    eventually("the fixed file is loaded", || async {
        readyz(&http, &server).await["failedReload"].is_null()
    })
    .await;
    assert_eq!(
        authorize(&http, &server, "https://probe.test/probe", &token)
            .await
            .headers()["x-edit"],
        "2"
    );
}

#[tokio::test]
async fn a_deleted_file_removes_its_services() {
    let dir = tempfile::tempdir().unwrap();
    policy_dir(dir.path());
    std::fs::write(dir.path().join("a.yaml"), probe_policy(0, "a.test")).unwrap();
    std::fs::write(
        dir.path().join("b.yaml"),
        probe_policy(0, "b.test").replace("service: probe", "service: probe-b"),
    )
    .unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = client();
    let token = token("rsa-a", json!({"even": "yes"}));
    assert_eq!(
        authorize(&http, &server, "https://b.test/probe", &token)
            .await
            .status(),
        200
    );
    std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
    eventually("b.test is no longer served", || async {
        authorize(&http, &server, "https://b.test/probe", &token)
            .await
            .status()
            == 404
    })
    .await;
    assert_eq!(
        authorize(&http, &server, "https://a.test/probe", &token)
            .await
            .status(),
        200
    );
}

#[cfg(unix)]
#[tokio::test]
async fn a_swapped_directory_symlink_is_picked_up() {
    let root = tempfile::tempdir().unwrap();
    for (name, k) in [("v1", 0), ("v2", 2)] {
        let at = root.path().join(name);
        policy_dir(&at);
        std::fs::write(at.join("probe.yaml"), probe_policy(k, "probe.test")).unwrap();
    }
    let current = root.path().join("current");
    std::os::unix::fs::symlink(root.path().join("v1"), &current).unwrap();
    let server = Server::start(&current, &[]);
    let http = client();
    let token = token("rsa-a", json!({"even": "yes"}));
    assert_eq!(
        authorize(&http, &server, "https://probe.test/probe", &token)
            .await
            .headers()["x-edit"],
        "0"
    );
    // As Kubernetes does it: a new symlink renamed over the old one, atomically.
    let next = root.path().join("next");
    std::os::unix::fs::symlink(root.path().join("v2"), &next).unwrap();
    std::fs::rename(&next, &current).unwrap();
    eventually("the new target is served", || async {
        authorize(&http, &server, "https://probe.test/probe", &token)
            .await
            .headers()
            .get("x-edit")
            .map(|v| v.to_str().unwrap().to_owned())
            == Some("2".to_owned())
    })
    .await;
}

#[tokio::test]
async fn a_rotated_key_file_is_picked_up() {
    let (dir, _) = probe_dir();
    let server = Server::start(dir.path(), &[]);
    let http = client();
    let old = token("rsa-a", json!({"even": "yes"}));
    let new = token("rsa-b", json!({"even": "yes"}));
    assert_eq!(
        authorize(&http, &server, "https://probe.test/probe", &old)
            .await
            .status(),
        200
    );
    assert_eq!(
        authorize(&http, &server, "https://probe.test/probe", &new)
            .await
            .status(),
        401
    );

    // The single key without kid becomes rsa-b's.
    let app: Value = serde_json::from_slice(
        &std::fs::read(support::fixtures().join("policies/keys/app.jwks.json")).unwrap(),
    )
    .unwrap();
    let mut rsa_b = app["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == "rsa-b")
        .unwrap()
        .clone();
    rsa_b.as_object_mut().unwrap().remove("kid");
    std::fs::write(
        dir.path().join("keys/single.jwks.json"),
        json!({"keys": [rsa_b]}).to_string(),
    )
    .unwrap();
    eventually("the new key verifies", || async {
        authorize(&http, &server, "https://probe.test/probe", &new)
            .await
            .status()
            == 200
    })
    .await;
    let refused = authorize(&http, &server, "https://probe.test/probe", &old).await;
    assert_eq!(
        refused.status(),
        401,
        "the removed key no longer verifies, cached or not"
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["details"][0]["code"], "INVALID_SIGNATURE");
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_forces_a_reload_when_watching_is_off() {
    let (dir, file) = probe_dir();
    let server = Server::start(dir.path(), &["--no-watch"]);
    let http = client();
    let token = token("rsa-a", json!({"even": "yes"}));
    std::fs::write(&file, probe_policy(2, "probe.test")).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        authorize(&http, &server, "https://probe.test/probe", &token)
            .await
            .headers()["x-edit"],
        "0",
        "not watched"
    );
    std::process::Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    eventually("SIGHUP reloads", || async {
        authorize(&http, &server, "https://probe.test/probe", &token)
            .await
            .headers()
            .get("x-edit")
            .map(|v| v.to_str().unwrap().to_owned())
            == Some("2".to_owned())
    })
    .await;
}
