//! Portcullis against regorus, cedar-policy and OPA on the same decisions (issue 8).
//!
//! ```text
//! cargo run --release -- [compare] [--requests N] [--rounds R]   # check, then time both comparisons
//! cargo run --release -- check [--requests N]                    # agreement check only
//! cargo run --release -- scaling [--rounds R]                    # decision time against services
//! cargo run --release -- profile rules|whole SECONDS             # Portcullis alone, for perf
//!                                  (or regorus|rvm|cedar|cedar-json: one peer alone)
//! cargo run --release --bin store_memory                         # trace store memory against capacity
//! ```
//!
//! Before timing, every engine decides every request and all must agree (allow or deny);
//! a disagreement stops the run and prints the request. Then all contenders run in the same
//! rounds, interleaved: each round times one pass of every contender over all requests, in
//! a rotating order; the figure per contender is the median over rounds of (pass time /
//! requests).

/// The allocator `portcullis serve` uses; every engine in this process runs on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use portcullis::Outcome;
use portcullis::decision::Step;
use portcullis_peers::corpus::{self, Request};
use portcullis_peers::engines::{
    Cedar, CedarJson, CedarRequest, Opa, Portcullis, Regorus, RegorusVm, RulesInput,
};
use portcullis_peers::generated;

struct Args {
    command: String,
    requests: usize,
    rounds: usize,
    rest: Vec<String>,
}

fn args() -> Args {
    let mut out = Args {
        command: "compare".into(),
        requests: 1200,
        rounds: 101,
        rest: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    let mut first = true;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--requests" => {
                out.requests = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--requests N")
            }
            "--rounds" => out.rounds = it.next().and_then(|n| n.parse().ok()).expect("--rounds R"),
            // `cargo bench` passes `--bench`.
            "--bench" => {}
            _ if first => out.command = a,
            _ => out.rest.push(a),
        }
        first = false;
    }
    out
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

/// Everything built ahead of the timed loops.
struct Setup {
    requests: Vec<Request>,
    portcullis: Portcullis,
    rules_inputs: Vec<RulesInput>,
    rego_values: Vec<regorus::Value>,
    rego_json: Vec<String>,
    cedar_requests: Vec<CedarRequest>,
    cedar_json: Vec<CedarJson>,
    opa_json: Vec<CString>,
    opa: Option<Opa>,
    opa_skipped: Option<String>,
}

fn setup(n: usize) -> Setup {
    let started = Instant::now();
    let key = corpus::encoding_key();
    let profiles = corpus::profiles(&key);
    let requests = corpus::requests(&profiles, n);
    let portcullis = Portcullis::new(&profiles);
    let rules_inputs = requests.iter().map(|r| portcullis.rules_input(r)).collect();
    let rego_json: Vec<String> = requests
        .iter()
        .map(|r| corpus::rego_input(r, &profiles).to_string())
        .collect();
    let rego_values = rego_json
        .iter()
        .map(|j| regorus::Value::from_json_str(j).expect("the input parses"))
        .collect();
    let cedar_docs: Vec<serde_json::Value> = requests
        .iter()
        .map(|r| corpus::cedar_request(r, &profiles))
        .collect();
    let cedar_requests = cedar_docs.iter().map(Cedar::build).collect();
    let cedar_json = cedar_docs.iter().map(CedarJson::of).collect();
    let opa_json = rego_json
        .iter()
        .map(|j| CString::new(j.as_str()).expect("no NUL"))
        .collect();
    let (opa, opa_skipped) = match Opa::load() {
        Ok(opa) => (Some(opa), None),
        Err(e) => {
            eprintln!("OPA skipped: {e}");
            (None, Some(e))
        }
    };
    let lengths = profiles.iter().map(|p| p.token.len());
    eprintln!(
        "set up {} requests over {} token profiles (RS256 tokens of {}–{} bytes) in {:.2?}",
        requests.len(),
        profiles.len(),
        lengths.clone().min().unwrap_or(0),
        lengths.max().unwrap_or(0),
        started.elapsed()
    );
    Setup {
        requests,
        portcullis,
        rules_inputs,
        rego_values,
        rego_json,
        cedar_requests,
        cedar_json,
        opa_json,
        opa,
        opa_skipped,
    }
}

fn token_was_cached(decision: &portcullis::Decision) -> bool {
    decision
        .trace
        .iter()
        .find(|e| e.step == Step::Token)
        .and_then(|e| e.detail.as_deref())
        .is_some_and(|d| d.contains("(cached)"))
}

/// Every engine on every request; stops on the first disagreement. Returns the number of
/// allowed requests.
fn check(s: &mut Setup) -> usize {
    let mut regorus = Regorus::new();
    let mut rvm = RegorusVm::new();
    let cedar = Cedar::new();
    let mut per_operation: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut allowed = 0;
    // Twice: the first pass puts the tokens in Portcullis' verified-token cache, the second
    // checks that whole decisions take them from it.
    for pass in 0..2 {
        for (i, req) in s.requests.iter().enumerate() {
            let decision = s.portcullis.decide(req);
            let whole = decision.outcome == Outcome::Allow;
            assert!(
                (whole && decision.status == 200) || (!whole && decision.status == 403),
                "request {i}: Portcullis answered {} ({:?}), not 200/403: {}",
                decision.status,
                decision.detail_code(),
                decision.audit
            );
            assert_eq!(
                decision.operation.as_deref(),
                Some(req.operation),
                "request {i}"
            );
            if pass == 1 {
                assert!(
                    token_was_cached(&decision),
                    "request {i}: the token was not cached"
                );
            }
            let answers = [
                ("portcullis decide", whole),
                ("portcullis rules", s.portcullis.rules(&s.rules_inputs[i])),
                ("portcullis routed rules", s.portcullis.routed_rules(req)),
                ("regorus", regorus.eval(&s.rego_values[i])),
                ("regorus json", regorus.eval_json(&s.rego_json[i])),
                ("regorus rvm", rvm.eval(&s.rego_values[i])),
                ("regorus rvm json", rvm.eval_json(&s.rego_json[i])),
            ];
            let cedar_answers = Cedar::AVAILABLE.then(|| {
                [
                    ("cedar", cedar.eval(&s.cedar_requests[i])),
                    ("cedar json", cedar.eval_json(&s.cedar_json[i])),
                ]
            });
            let opa = s.opa.as_ref().map(|o| ("opa", o.eval(&s.opa_json[i])));
            let all: Vec<(&str, bool)> = answers
                .into_iter()
                .chain(cedar_answers.into_iter().flatten())
                .chain(opa)
                .collect();
            if all.iter().any(|(_, a)| *a != whole) {
                eprintln!("DISAGREEMENT on request {i}: {req:#?}");
                eprintln!("rego input: {}", s.rego_json[i]);
                eprintln!("cedar context: {}", s.cedar_json[i].context);
                eprintln!("cedar entities: {}", s.cedar_json[i].entities);
                eprintln!("portcullis: {}", decision.audit);
                if let Some(body) = &decision.body {
                    eprintln!("portcullis body: {}", serde_json::to_string(body).unwrap());
                }
                for (engine, answer) in &all {
                    eprintln!("  {engine:<24} {}", if *answer { "allow" } else { "deny" });
                }
                panic!("the engines disagree on request {i}");
            }
            if pass == 0 {
                let e = per_operation.entry(req.operation).or_default();
                if whole {
                    e.0 += 1;
                    allowed += 1;
                } else {
                    e.1 += 1;
                }
            }
        }
    }
    let engines = 7 + 2 * usize::from(Cedar::AVAILABLE) + usize::from(s.opa.is_some());
    println!(
        "agreement: {engines} engine paths give the same answer on all {} requests \
         ({allowed} allow, {} deny)",
        s.requests.len(),
        s.requests.len() - allowed
    );
    for (op, (a, d)) in &per_operation {
        println!("  {op:<16} {a:>4} allow {d:>4} deny");
    }
    allowed
}

/// One contender: a pass over all requests, returning how many it allowed.
struct Contender<'a> {
    group: &'static str,
    name: &'static str,
    pass: Box<dyn FnMut() -> usize + 'a>,
    per_decision: Vec<f64>,
}

fn contender<'a>(
    group: &'static str,
    name: &'static str,
    pass: impl FnMut() -> usize + 'a,
) -> Contender<'a> {
    Contender {
        group,
        name,
        pass: Box::new(pass),
        per_decision: Vec::new(),
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 10_000.0 {
        format!("{:.1} µs", ns / 1000.0)
    } else if ns >= 1000.0 {
        format!("{:.2} µs", ns / 1000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

fn compare(s: &mut Setup, rounds: usize) {
    let allowed = check(s);
    let n = s.requests.len();
    let load_before = loadavg();
    let started = Instant::now();

    let p = &s.portcullis;
    let mut regorus = Regorus::new();
    let mut regorus_json = Regorus::new();
    let mut rvm = RegorusVm::new();
    let mut rvm_json = RegorusVm::new();
    let cedar = Cedar::new();
    let (requests, rules_inputs) = (&s.requests, &s.rules_inputs);
    let (rego_values, rego_json) = (&s.rego_values, &s.rego_json);
    let (cedar_requests, cedar_json) = (&s.cedar_requests, &s.cedar_json);
    let opa_json = &s.opa_json;

    let count = |it: &mut dyn Iterator<Item = bool>| it.filter(|a| black_box(*a)).count();
    let mut contenders = vec![
        contender("rules", "portcullis", || {
            count(&mut rules_inputs.iter().map(|i| p.rules(black_box(i))))
        }),
        contender("rules", "portcullis + routing", || {
            count(&mut requests.iter().map(|r| p.routed_rules(black_box(r))))
        }),
        contender("rules", "regorus (interpreter)", || {
            count(&mut rego_values.iter().map(|v| regorus.eval(black_box(v))))
        }),
        contender("rules", "regorus (RVM)", || {
            count(&mut rego_values.iter().map(|v| rvm.eval(black_box(v))))
        }),
        contender("whole", "portcullis decide", || {
            count(
                &mut requests
                    .iter()
                    .map(|r| black_box(p.decide(black_box(r))).is_allowed()),
            )
        }),
        contender("whole", "regorus (interpreter) + JSON", || {
            count(
                &mut rego_json
                    .iter()
                    .map(|j| regorus_json.eval_json(black_box(j))),
            )
        }),
        contender("whole", "regorus (RVM) + JSON", || {
            count(&mut rego_json.iter().map(|j| rvm_json.eval_json(black_box(j))))
        }),
    ];
    if Cedar::AVAILABLE {
        contenders.push(contender("rules", "cedar-policy", || {
            count(&mut cedar_requests.iter().map(|r| cedar.eval(black_box(r))))
        }));
        contenders.push(contender("whole", "cedar-policy + JSON", || {
            count(&mut cedar_json.iter().map(|j| cedar.eval_json(black_box(j))))
        }));
    }
    // A part of `decide`: taking the bearer token out of the headers and computing its
    // verified-token cache key, the first two steps of the token check on a cache hit.
    let fingerprint = match &p.service().token.keys {
        portcullis::token::KeySource::Static { keys, .. } => keys.fingerprint,
        _ => panic!("meme-game's keys are a file"),
    };
    let cache = portcullis::token::TokenCache::new(1);
    contenders.push(contender("part", "bearer + cache key", move || {
        for r in requests {
            let headers = [("authorization", p.authorizations[r.profile].as_str())];
            let token = portcullis::token::extract_bearer(black_box(&headers)).expect("a token");
            black_box(cache.key(&fingerprint, token));
        }
        allowed
    }));
    if let Some(opa) = &s.opa {
        contenders.push(contender("opa", "OPA (FFI, JSON in/out)", || {
            count(&mut opa_json.iter().map(|j| opa.eval(black_box(j))))
        }));
    }

    // Warm up: three passes each.
    for c in &mut contenders {
        for _ in 0..3 {
            assert_eq!((c.pass)(), allowed, "{}", c.name);
        }
    }
    let k = contenders.len();
    for round in 0..rounds {
        for j in 0..k {
            let c = &mut contenders[(round + j) % k];
            let t = Instant::now();
            let a = (c.pass)();
            let elapsed = t.elapsed();
            assert_eq!(a, allowed, "{}", c.name);
            c.per_decision.push(elapsed.as_nanos() as f64 / n as f64);
        }
    }
    let elapsed = started.elapsed();
    let load_after = loadavg();

    println!(
        "\n{n} requests ({allowed} allow), {rounds} rounds, every contender once per round in \
         rotating order; per decision = pass time / {n}; load average before {load_before}, \
         after {load_after}; {:.1?} in all; CPU: {}",
        elapsed,
        cpu_model()
    );
    let mut medians: BTreeMap<&str, f64> = BTreeMap::new();
    for c in &mut contenders {
        c.per_decision.sort_by(f64::total_cmp);
        medians.insert(c.name, quantile(&c.per_decision, 0.5));
    }
    let opa_median = medians.get("OPA (FFI, JSON in/out)").copied();
    for (group, title, base) in [
        (
            "rules",
            "Rules only (claims verified, operation pre-matched, input pre-built)",
            "portcullis",
        ),
        (
            "whole",
            "Whole decision: Portcullis decide (cached token) vs peer + JSON decoding",
            "portcullis decide",
        ),
    ] {
        println!("\n{title}");
        println!(
            "{:<32} {:>10} {:>10} {:>10} {:>10}  {:>12}",
            "engine", "median", "p10", "p90", "min", "× portcullis"
        );
        let base_median = medians[base];
        let rows = contenders
            .iter()
            .filter(|c| c.group == group)
            .map(|c| (c.name, &c.per_decision[..]))
            .chain(
                contenders
                    .iter()
                    .filter(|c| c.group == "opa")
                    .map(|c| (c.name, &c.per_decision[..])),
            );
        for (name, d) in rows {
            let m = quantile(d, 0.5);
            println!(
                "{name:<32} {:>10} {:>10} {:>10} {:>10}  {:>11.2}×",
                fmt_ns(m),
                fmt_ns(quantile(d, 0.1)),
                fmt_ns(quantile(d, 0.9)),
                fmt_ns(d[0]),
                m / base_median
            );
        }
    }
    let rules = medians["portcullis"];
    let whole = medians["portcullis decide"];
    let part = medians["bearer + cache key"];
    println!(
        "\nof Portcullis decide, bearer extraction + verified-token cache key \
         (token::extract_bearer + TokenCache::key, a seeded foldhash of key set and token): {} ({:.0}%)",
        fmt_ns(part),
        100.0 * part / whole
    );
    let cedar_rules = medians.get("cedar-policy").copied();
    let rego_rules = medians["regorus (interpreter)"];
    let rvm_rules = medians["regorus (RVM)"];
    println!("\nTargets:");
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    match cedar_rules {
        Some(cedar_rules) => println!(
            "  rules only ≥ 3× faster than cedar-policy: {:.2}× — {}",
            cedar_rules / rules,
            verdict(cedar_rules / rules >= 3.0)
        ),
        None => println!("  cedar-policy: not in this build (feature `cedar` off)"),
    }
    println!(
        "  rules only ≥ 5× faster than regorus: interpreter {:.2}× — {}; RVM {:.2}× — {}",
        rego_rules / rules,
        verdict(rego_rules / rules >= 5.0),
        rvm_rules / rules,
        verdict(rvm_rules / rules >= 5.0)
    );
    let fastest_peer = [rego_rules, rvm_rules]
        .into_iter()
        .chain(cedar_rules)
        .chain(opa_median)
        .fold(f64::INFINITY, f64::min);
    println!(
        "  whole decision ({}) faster than every peer's rules-only time (fastest {}): {}",
        fmt_ns(whole),
        fmt_ns(fastest_peer),
        verdict(whole < fastest_peer)
    );
    if let Some(why) = &s.opa_skipped {
        println!("  OPA skipped: {why}");
    }
}

/// Decision time against the number of services.
fn scaling(rounds: usize) {
    const REQUESTS: usize = 1000;
    let key = corpus::encoding_key();
    let claims = serde_json::json!({"sub": "user.1", "client_id": "bench-client", "scope": "read"});
    let token = corpus::sign(&key, claims.as_object().unwrap(), generated::AUDIENCE);
    let authorization = format!("Bearer {token}");
    let headers = [("authorization", authorization.as_str())];
    println!(
        "\nDecision time against services (whole decide, cached token, {REQUESTS} requests, \
         median of {rounds} passes; load average {}):",
        loadavg()
    );
    println!(
        "{:>9} {:>10} {:>24} {:>28}",
        "services", "compile", "requests to 10 services", "requests to ≤1,000 services"
    );
    for services in [10, 100, 1_000, 10_000] {
        let (set, compile_time) = generated::compile(
            &generated::sources(services),
            &corpus::policies_dir().join("keys/meme-game.jwks.json"),
        );
        assert_eq!(set.services.len(), services);
        let engine = portcullis::Engine::default();
        let mut cells = Vec::new();
        for targets in [10, services.min(1000)] {
            let reqs = generated::requests(services, targets, REQUESTS);
            let decide = |r: &generated::GeneratedRequest| {
                engine.decide(
                    &set,
                    &portcullis::DecisionRequest {
                        method: r.method,
                        url: &r.url,
                        headers: &headers,
                        client: None,
                        client_cert: None,
                    },
                    SystemTime::now(),
                )
            };
            for r in &reqs {
                let d = decide(r);
                assert!(d.is_allowed(), "{} {}: {}", r.method, r.url, d.audit);
                assert_eq!(&*d.service.unwrap(), format!("svc-{}", r.service));
            }
            let mut times = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let t = Instant::now();
                for r in &reqs {
                    black_box(decide(black_box(r)));
                }
                times.push(t.elapsed().as_nanos() as f64 / REQUESTS as f64);
            }
            times.sort_by(f64::total_cmp);
            cells.push(format!(
                "{} ({} services)",
                fmt_ns(quantile(&times, 0.5)),
                targets
            ));
        }
        println!(
            "{services:>9} {:>10} {:>24} {:>28}",
            format!("{compile_time:.2?}"),
            cells[0],
            cells[1]
        );
    }
}

/// One engine alone in a loop, for `perf record`.
fn profile(s: &Setup, what: &str, seconds: u64) {
    struct Peers {
        regorus: Regorus,
        rvm: RegorusVm,
        cedar: Cedar,
    }
    let mut peers = Peers {
        regorus: Regorus::new(),
        rvm: RegorusVm::new(),
        cedar: Cedar::new(),
    };
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut decisions = 0u64;
    while Instant::now() < until {
        match what {
            "rules" => {
                for i in &s.rules_inputs {
                    black_box(s.portcullis.rules(black_box(i)));
                }
            }
            "whole" => {
                for r in &s.requests {
                    black_box(s.portcullis.decide(black_box(r)));
                }
            }
            "regorus" => {
                for v in &s.rego_values {
                    black_box(peers.regorus.eval(black_box(v)));
                }
            }
            "rvm" => {
                for v in &s.rego_values {
                    black_box(peers.rvm.eval(black_box(v)));
                }
            }
            "cedar" if Cedar::AVAILABLE => {
                for r in &s.cedar_requests {
                    black_box(peers.cedar.eval(black_box(r)));
                }
            }
            "cedar-json" if Cedar::AVAILABLE => {
                for j in &s.cedar_json {
                    black_box(peers.cedar.eval_json(black_box(j)));
                }
            }
            _ => panic!("profile rules|whole|regorus|rvm|cedar|cedar-json SECONDS"),
        }
        decisions += s.requests.len() as u64;
    }
    eprintln!("{decisions} decisions ({what})");
}

fn main() {
    let a = args();
    match a.command.as_str() {
        "compare" => {
            let mut s = setup(a.requests);
            compare(&mut s, a.rounds);
        }
        "check" => {
            let mut s = setup(a.requests);
            check(&mut s);
        }
        "scaling" => scaling(a.rounds.min(31)),
        "profile" => {
            let mut s = setup(a.requests);
            check(&mut s);
            let what = a.rest.first().map_or("rules", String::as_str);
            let seconds = a.rest.get(1).and_then(|n| n.parse().ok()).unwrap_or(10);
            profile(&s, what, seconds);
        }
        other => panic!("unknown command {other}: compare | check | scaling | profile"),
    }
}
