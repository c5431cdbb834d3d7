//! Replicas sharing state through a real `redis-server` (issue 9): recent decisions of every
//! replica answered by any of them, rate limits that hold across replicas, and an outage of
//! Redis that fails no decision, is counted, and heals by itself.
//!
//! Skipped (with a note) without `redis-server`, unless `PORTCULLIS_REQUIRE_REDIS=1`.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::redis::Redis;
use support::server::Server;

/// Longest wait for an asynchronous write to show in another replica.
const PROPAGATION: Duration = Duration::from_secs(10);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn replica(redis: &Redis, extra: &[&str]) -> Server {
    let url = redis.url();
    // A generous deadline: a debug build on a busy machine must not fall back to local
    // counting by accident (the fallback has its own test, with Redis stopped).
    let mut args = vec!["--trace-store", url.as_str(), "--redis-timeout", "2s"];
    args.extend_from_slice(extra);
    Server::start(&support::fixtures().join("policies"), &args)
}

/// Asks `server` through `/v1/authorize` about GET `url` with `token`; returns the status and
/// the decision id.
async fn authorize(server: &Server, url: &str, token: Option<&str>) -> (u16, String) {
    let mut request = client()
        .get(server.http_url("/v1/authorize"))
        .header("X-Original-Method", "GET")
        .header("X-Original-URL", url)
        .header("X-Real-IP", "10.0.0.9");
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let answer = request.send().await.expect("an answer");
    let id = answer.headers()["x-decision-id"]
        .to_str()
        .unwrap()
        .to_owned();
    (answer.status().as_u16(), id)
}

async fn get_json(server: &Server, path: &str) -> (u16, Value) {
    let answer = client().get(server.http_url(path)).send().await.unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

/// Polls `server` until decision `id` is found there (bounded).
async fn wait_for_decision(server: &Server, id: &str) -> Value {
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let (status, body) = get_json(server, &format!("/v1/decisions/{id}")).await;
        if status == 200 {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "decision {id} did not reach the replica on {} within {PROPAGATION:?}",
            server.http
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the metric line starting with `prefix` (labels included), 0 if absent.
async fn metric(server: &Server, prefix: &str) -> f64 {
    server
        .get_text("/metrics")
        .await
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn ids(list: &Value) -> Vec<String> {
    list["decisions"]
        .as_array()
        .unwrap_or_else(|| panic!("not a listing: {list}"))
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn every_replica_answers_for_the_decisions_of_all() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (replica(&redis, &[]), replica(&redis, &[]));
    let good = support::app_token(json!({"sub": "shared.alice"}));

    // Decisions on each replica: allowed, unauthenticated, unknown service.
    let mut made = Vec::new();
    for (server, url, token) in [
        (&a, "https://api.test/app/v1/items/1", Some(good.as_str())),
        (&a, "https://api.test/app/v1/items/2", None),
        (&b, "https://api.test/app/v1/items/3", Some(good.as_str())),
        (&b, "https://elsewhere.test/x", None),
    ] {
        made.push(authorize(server, url, token).await);
        // Ids order by their millisecond; keep the four apart.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert_eq!(
        made.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [200, 401, 200, 404]
    );

    // Each decision, by the id its client got, from both replicas, with the same content.
    for (_, id) in &made {
        let from_a = wait_for_decision(&a, id).await;
        let from_b = wait_for_decision(&b, id).await;
        assert_eq!(from_a, from_b, "replicas disagree on {id}");
        assert_eq!(from_a["id"], id.as_str());
    }
    // An id no replica made is not found (one index lookup, no scan).
    let unknown = "01KAAAAAAAAAAAAAAAAAAAAAAA";
    for server in [&a, &b] {
        let (status, body) = get_json(server, &format!("/v1/decisions/{unknown}")).await;
        assert_eq!((status, body["code"].as_str()), (404, Some("NOT_FOUND")));
    }
    let shown = wait_for_decision(&b, &made[0].1).await;
    assert_eq!(shown["request"]["url"], "https://api.test/app/v1/items/1");
    assert_eq!(shown["token"]["sub"], "shared.alice");

    // Listing on either replica: all four, newest first; filters apply to shared records.
    for server in [&a, &b] {
        let (status, list) = get_json(server, "/v1/decisions?limit=10").await;
        assert_eq!(status, 200);
        let listed = ids(&list);
        let expected: Vec<String> = made.iter().rev().map(|(_, id)| id.clone()).collect();
        assert_eq!(listed, expected, "listing of {}", server.http);
        assert!(list.get("sharedStore").is_none());

        let (_, allowed) =
            get_json(server, "/v1/decisions?outcome=allow&subject=shared.alice").await;
        assert_eq!(ids(&allowed), [made[2].1.clone(), made[0].1.clone()]);
        let (_, missing) = get_json(server, "/v1/decisions?status=404").await;
        assert_eq!(ids(&missing), [made[3].1.clone()]);
    }

    // The gRPC API of a replica reads the shared store too.
    let mut grpc =
        portcullis::proto::decision_service_client::DecisionServiceClient::connect(a.grpc_url())
            .await
            .unwrap();
    let listed = grpc
        .list_decisions(portcullis::proto::ListDecisionsRequest {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.decisions.len(), 4);
    let from_b = grpc
        .get_decision(portcullis::proto::GetDecisionRequest {
            id: made[3].1.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(from_b.status, 404);
    assert!(
        metric(
            &b,
            "portcullis_shared_trace_records_total{result=\"written\"}"
        )
        .await
            >= 2.0
    );
    assert_eq!(metric(&a, "portcullis_shared_store_up").await, 1.0);

    // A burst on both replicas at once, written in batches (many decisions per stream entry,
    // entries of the two replicas interleaved in time): every one is listed, and found by id
    // on the replica that did not make it.
    let burst = support::app_token(json!({"sub": "shared.burst"}));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..150 {
        let maker = if i % 2 == 0 { &a } else { &b };
        let (endpoint, bearer) = (maker.http_url("/v1/authorize"), format!("Bearer {burst}"));
        tasks.spawn(async move {
            let answer = client()
                .get(endpoint)
                .header("X-Original-Method", "GET")
                .header(
                    "X-Original-URL",
                    format!("https://api.test/app/v1/items/b{i}"),
                )
                .header("Authorization", bearer)
                .send()
                .await
                .expect("an answer");
            assert_eq!(answer.status(), 200);
            let id = answer.headers()["x-decision-id"]
                .to_str()
                .unwrap()
                .to_owned();
            (i, id)
        });
    }
    let made: Vec<(usize, String)> = tasks.join_all().await;
    for (i, id) in &made {
        wait_for_decision(if i % 2 == 0 { &b } else { &a }, id).await;
    }
    let burst_ids: Vec<String> = made.into_iter().map(|(_, id)| id).collect();
    let (_, listed) = get_json(&b, "/v1/decisions?subject=shared.burst&limit=1000").await;
    let mut listed = ids(&listed);
    listed.sort();
    let mut expected = burst_ids.clone();
    expected.sort();
    assert_eq!(listed, expected);
}

#[tokio::test]
async fn a_rate_limit_holds_across_replicas() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (replica(&redis, &[]), replica(&redis, &[]));
    // `quota` allows 2 requests per minute per subject. Stay clear of a window boundary.
    let second = support::unix_now() % 60;
    if second >= 55 {
        tokio::time::sleep(Duration::from_secs(61 - second as u64)).await;
    }
    let token = support::app_token(json!({"sub": "limited.bob", "scope": "items:read"}));
    let url = "https://api.test/app/v1/quota";
    let mut statuses = Vec::new();
    for server in [&a, &b, &a, &b] {
        statuses.push(authorize(server, url, Some(&token)).await.0);
    }
    assert_eq!(statuses, [200, 200, 429, 429]);

    // The 429 says why and when to come back.
    let answer = client()
        .get(b.http_url("/v1/authorize"))
        .header("X-Original-Method", "GET")
        .header("X-Original-URL", url)
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 429);
    let retry: u64 = answer.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["code"], "TOO_MANY_REQUESTS");
    assert_eq!(body["details"][0]["code"], "RATE_LIMIT_EXCEEDED");

    // Another subject has its own counter.
    let other = support::app_token(json!({"sub": "limited.carol", "scope": "items:read"}));
    assert_eq!(authorize(&a, url, Some(&other)).await.0, 200);
    assert_eq!(
        metric(
            &a,
            "portcullis_rate_limit_counts_total{counted_by=\"shared\"}"
        )
        .await,
        3.0
    );
}

#[tokio::test]
async fn a_redis_outage_fails_no_decision_and_writing_resumes_by_itself() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let (a, b) = (replica(&redis, &[]), replica(&redis, &[]));
    let good = support::app_token(json!({"sub": "outage.dave", "scope": "items:read"}));
    let (status, before) = authorize(&a, "https://api.test/app/v1/items/1", Some(&good)).await;
    assert_eq!(status, 200);
    wait_for_decision(&b, &before).await;

    redis.stop();
    // Every decision is still made, on both replicas; rate limits are counted locally.
    let mut answered = 0;
    let mut local_ids = Vec::new();
    for i in 0..100 {
        let server = if i % 2 == 0 { &a } else { &b };
        let (status, id) = authorize(server, "https://api.test/app/v1/items/9", Some(&good)).await;
        assert_eq!(status, 200, "request {i} during the outage");
        answered += 1;
        if i % 2 == 0 {
            local_ids.push(id);
        }
    }
    assert_eq!(answered, 100);
    let (status, _) = authorize(&b, "https://api.test/app/v1/quota", Some(&good)).await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(
            &b,
            "portcullis_rate_limit_counts_total{counted_by=\"local_fallback\"}"
        )
        .await,
        1.0
    );

    // Records that could not be written are counted, and the replica's own store answers.
    let deadline = Instant::now() + PROPAGATION;
    while metric(
        &a,
        "portcullis_shared_trace_records_total{result=\"dropped_unavailable\"}",
    )
    .await
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "no drop counted:\n{}",
            a.get_text("/metrics").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&a, "portcullis_shared_store_up").await, 0.0);
    let (status, list) = get_json(&a, "/v1/decisions?limit=5").await;
    assert_eq!(status, 200);
    assert_eq!(list["sharedStore"], "unavailable");
    assert_eq!(ids(&list)[0], *local_ids.last().unwrap());
    let (status, own) = get_json(&a, &format!("/v1/decisions/{}", local_ids[0])).await;
    assert_eq!(
        (status, own["id"].as_str()),
        (200, Some(local_ids[0].as_str()))
    );
    a.wait_for_log("decisions not written to the shared store")
        .await;

    // Redis back (empty: no persistence): new decisions reach the other replica again,
    // without restarting either.
    redis.resume();
    let deadline = Instant::now() + PROPAGATION;
    let after = 'resumed: loop {
        // A decision made before the writer reconnects is dropped: make another until one
        // arrives (each is written a few milliseconds after it is made, so wait a while).
        let (_, id) = authorize(&a, "https://api.test/app/v1/items/2", Some(&good)).await;
        for _ in 0..10 {
            let (status, _) = get_json(&b, &format!("/v1/decisions/{id}")).await;
            if status == 200 {
                break 'resumed id;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            Instant::now() < deadline,
            "writing did not resume after Redis came back"
        );
    };
    let (_, list) = get_json(&b, "/v1/decisions?limit=1").await;
    assert_eq!(ids(&list), [after]);
    assert_eq!(metric(&a, "portcullis_shared_store_up").await, 1.0);
}

#[test]
fn a_trace_store_that_is_neither_memory_nor_redis_is_refused_at_start() {
    // Refused rather than started with the state silently kept local; TLS is not supported.
    for (url, says) in [
        ("postgres://user:secret@db/x", "--trace-store"),
        ("rediss://:secret@127.0.0.1:6380/0", "not supported yet"),
        (
            "redis://:secret@127.0.0.1:notaport/0",
            "cannot use the shared store",
        ),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["serve", "--policies"])
            .arg(support::fixtures().join("policies"))
            .args(["--trace-store", url])
            .args([
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{url}: {output:?}");
        let text = String::from_utf8_lossy(&output.stderr);
        assert!(text.contains(says), "{url}: {text}");
        assert!(!text.contains("secret"), "the password is shown: {text}");
    }
}
