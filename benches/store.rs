//! Recent-decisions store benchmarks (see BENCHMARKS.md for targets and results).
//!
//! Run with `cargo bench --bench store`.
//!
//! - Memory, printed to stderr before the timed benchmarks: stores of 1,000 to 1,000,000
//!   records filled with decisions fresh from the engine, the store's own accounting
//!   (`approx_bytes / len`) beside the real heap growth: bytes allocated minus bytes freed
//!   as requested (counted by this file's global allocator), the same as glibc's `malloc`
//!   sees it with its chunk headers and rounding (`mallinfo2`, on glibc only), and the live
//!   allocations per record. Skipped when a filter is given that does not match
//!   `store/memory`.
//! - `store/record`: one insert into a full store of 10,000 (an eviction each time), of a
//!   403 decision with a full trace, with a fresh id per insert; `store/record_allow`, the
//!   same with an allow; `…_inputs`, each as a record that keeps only what the decision was
//!   made on (`TraceStore::record_decided`, what a server without a shared store records);
//!   `store/record_mix`, `…_inputs`: the memory table's mix, each kind in turn.
//! - `store/rebuild_decision`, `…_inputs`: reading a 403's record back into its decision,
//!   whole, and decided again from its inputs.
//! - `store/list_100_filtered`: a list with a service and outcome filter and a limit of 100,
//!   on a full store of 10,000 where one record in four matches.

use std::alloc::System;
use std::cell::Cell;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::trace::{DecisionFilter, TraceStore};
use portcullis::{Decision, DecisionRequest, Engine, Outcome, PolicyOptions, PolicySet};

const POLICY_DIR: &str = "policies";
const PRIVATE_KEY: &str = "policies/keys/meme-game.dev-key.pem";
const KID: &str = "meme-game-dev-rsa-1";
const BASE: &str = "https://localhost:8443/meme-game/api/v1";

/// Capacity of the timed benchmarks' store (the default capacity).
const CAPACITY: usize = 10_000;
/// Capacities of the memory table; the last only if the one before predicts it fills in
/// [`MEMORY_TIME_LIMIT`].
const MEMORY_CAPACITIES: [usize; 4] = [1_000, 10_000, 100_000, 1_000_000];
const MEMORY_TIME_LIMIT: Duration = Duration::from_secs(20);

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{CountingAllocator, live, set_counting};

#[global_allocator]
static ALLOCATOR: CountingAllocator<System> = CountingAllocator(System);

/// Bytes glibc's `malloc` has handed out, its chunk headers and rounding included.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn malloc_in_use() -> Option<isize> {
    /// `struct mallinfo2` of `<malloc.h>` (glibc 2.33 and later).
    #[repr(C)]
    struct MallInfo2 {
        arena: usize,
        ordblks: usize,
        smblks: usize,
        hblks: usize,
        hblkhd: usize,
        usmblks: usize,
        fsmblks: usize,
        uordblks: usize,
        fordblks: usize,
        keepcost: usize,
    }
    unsafe extern "C" {
        fn mallinfo2() -> MallInfo2;
    }
    // SAFETY: `mallinfo2` takes nothing and only reads the allocator's statistics.
    let info = unsafe { mallinfo2() };
    // Chunks in use from the main arena, plus blocks mapped on their own (large tables).
    Some((info.uordblks + info.hblkhd) as isize)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn malloc_in_use() -> Option<isize> {
    None
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// `Bearer` and an RS256 token for meme-game: a player with write scope, user `user.1`.
fn authorization() -> String {
    let pem = std::fs::read(PRIVATE_KEY).expect("the development key is readable");
    let key = EncodingKey::from_rsa_pem(&pem).expect("the development key is an RSA key");
    let now = unix_now();
    let claims = serde_json::json!({
        "iss": "https://auth.example.com",
        "aud": "meme-game",
        "sub": "user.1",
        "client_id": "meme-game-web",
        "groups": ["players"],
        "scope": "answers:write memes:read",
        "iat": now,
        "exp": now + 3600,
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KID.to_owned());
    let token = jsonwebtoken::encode(&header, &claims, &key).expect("the token is signed");
    format!("Bearer {token}")
}

/// The kinds of decision the benchmarks store.
#[derive(Clone, Copy)]
enum Kind {
    /// 403: `user.1` submits an answer as another user; base URL, token, operation and four
    /// rule entries in the trace (the last one decisive).
    FullTraceDeny,
    /// 200: the leaderboard, with upstream headers.
    Allow,
    /// 401: no token.
    NoToken,
    /// 404: no service for the URL.
    NoService,
}

struct Decider {
    policies: Arc<PolicySet>,
    engine: Engine,
    authorization: String,
}

impl Decider {
    fn new() -> Self {
        let policies = portcullis::load_dir(POLICY_DIR.as_ref(), &PolicyOptions::default())
            .expect("the example policies compile");
        Self {
            policies: Arc::new(policies),
            engine: Engine::default(),
            authorization: authorization(),
        }
    }

    /// A fresh decision of `kind`; `n` makes its URL distinct.
    fn decide(&self, kind: Kind, n: usize) -> Decision {
        let (method, url, with_token) = match kind {
            Kind::FullTraceDeny => ("POST", format!("{BASE}/users/user.{n}0/answers"), true),
            Kind::Allow => ("GET", format!("{BASE}/leaderboard?page={n}"), true),
            Kind::NoToken => ("GET", format!("{BASE}/memes/m-{n}"), false),
            Kind::NoService => ("GET", format!("https://localhost:8443/nothing/{n}"), false),
        };
        let authorization = [("authorization", self.authorization.as_str())];
        let headers: &[(&str, &str)] = if with_token { &authorization } else { &[] };
        self.engine.decide(
            &self.policies,
            &DecisionRequest {
                method,
                url: &url,
                headers,
                client: Some("203.0.113.9".parse().expect("an IP address")),
                client_cert: None,
            },
            SystemTime::now(),
        )
    }
}

fn check(decision: &Decision, kind: Kind) {
    let (outcome, status, min_trace) = match kind {
        Kind::FullTraceDeny => (Outcome::Deny, 403, 7),
        Kind::Allow => (Outcome::Allow, 200, 3),
        Kind::NoToken => (Outcome::Deny, 401, 2),
        Kind::NoService => (Outcome::Deny, 404, 1),
    };
    assert!(
        decision.outcome == outcome
            && decision.status == status
            && decision.trace.len() >= min_trace,
        "expected {status} with {min_trace} trace entries, got {} with {}: {}",
        decision.status,
        decision.trace.len(),
        decision.audit
    );
}

/// One row of the memory table: fills a new store of `capacity` with fresh decisions
/// (cycling through `kinds`) and prints its accounting beside the heap it really took.
/// Returns how long the fill took.
fn memory_row(
    decider: &Decider,
    label: &str,
    kinds: &[Kind],
    capacity: usize,
    form: Form,
) -> Duration {
    let started = Instant::now();
    let (bytes_before, allocations_before) = live();
    let malloc_before = malloc_in_use();
    let store = TraceStore::new(capacity);
    for i in 0..capacity {
        let decision = decider.decide(kinds[i % kinds.len()], i);
        form.record(&store, &decision, &decider.policies);
    }
    let (bytes_after, allocations_after) = live();
    let malloc = malloc_before
        .zip(malloc_in_use())
        .map(|(before, after)| after - before);
    let heap = bytes_after - bytes_before;
    let elapsed = started.elapsed();
    let len = store.len();
    let per_record = |n: isize| n / len as isize;
    let full_trace = store
        .list(&DecisionFilter::default(), 1)
        .first()
        .map_or(0, |r| r.decision().trace.len());
    eprintln!(
        "{label:<30} {capacity:>9} {:>12} {:>11} {:>13} {:>11} {:>9.1} {:>9.2?}",
        store.approx_bytes() / len,
        per_record(heap),
        malloc.map_or("-".to_owned(), |m| per_record(m).to_string()),
        per_record(allocations_after - allocations_before),
        heap as f64 / (1024.0 * 1024.0),
        elapsed
    );
    assert_eq!(len, capacity);
    assert!(full_trace > 0);
    drop(store);
    elapsed
}

fn memory_table() {
    let decider = Decider::new();
    for (kind, n) in [
        (Kind::FullTraceDeny, 1),
        (Kind::Allow, 2),
        (Kind::NoToken, 3),
        (Kind::NoService, 4),
    ] {
        check(&decider.decide(kind, n), kind);
    }
    set_counting(true);
    eprintln!(
        "\ntrace store memory per record, slots and index included: approx = the store's own \
         accounting (TraceStore::approx_bytes); heap = bytes allocated minus freed while \
         filling; malloc = the same with glibc's chunk overhead; allocs = live allocations"
    );
    eprintln!(
        "{:<30} {:>9} {:>12} {:>11} {:>13} {:>11} {:>9} {:>9}",
        "decisions",
        "capacity",
        "approx B/rec",
        "heap B/rec",
        "malloc B/rec",
        "allocs/rec",
        "heap MiB",
        "fill"
    );
    let mut last = Duration::ZERO;
    for (i, capacity) in MEMORY_CAPACITIES.into_iter().enumerate() {
        if i > 0 {
            let ratio = (capacity / MEMORY_CAPACITIES[i - 1]) as u32;
            let predicted = last * ratio;
            if predicted > MEMORY_TIME_LIMIT {
                eprintln!(
                    "{:<30} {capacity:>9} skipped: the fill would take about {predicted:.0?}",
                    "403 full trace"
                );
                break;
            }
        }
        last = memory_row(
            &decider,
            "403 full trace",
            &[Kind::FullTraceDeny],
            capacity,
            Form::Whole,
        );
    }
    let mix = MIX;
    for form in [Form::Whole, Form::Inputs] {
        let label = |what: &str| format!("{what}{}", form.suffix());
        memory_row(&decider, &label("mix 2:1:1:1"), &mix, CAPACITY, form);
        memory_row(
            &decider,
            &label("200 allow"),
            &[Kind::Allow],
            CAPACITY,
            form,
        );
        memory_row(
            &decider,
            &label("401 no token"),
            &[Kind::NoToken],
            CAPACITY,
            form,
        );
    }
    memory_row(
        &decider,
        &format!("403 full trace{}", Form::Inputs.suffix()),
        &[Kind::FullTraceDeny],
        CAPACITY,
        Form::Inputs,
    );
    eprintln!();
    set_counting(false);
}

/// A realistic mix: 2:1:1:1 allow, 403, 401, 404.
const MIX: [Kind; 5] = [
    Kind::Allow,
    Kind::Allow,
    Kind::FullTraceDeny,
    Kind::NoToken,
    Kind::NoService,
];

/// How the store keeps a decision: whole (`TraceStore::record`, as with a shared store), or
/// only what it was made on, rebuilt when read (`record_decided`, as a server without one).
#[derive(Clone, Copy)]
enum Form {
    Whole,
    Inputs,
}

impl Form {
    fn record(self, store: &TraceStore, decision: &Decision, policies: &Arc<PolicySet>) {
        let record = store.record_as(decision, policies, self);
        assert_eq!(record.rebuilds(), matches!(self, Form::Inputs));
    }

    fn suffix(self) -> &'static str {
        match self {
            Form::Whole => "",
            Form::Inputs => ", inputs only",
        }
    }
}

trait RecordAs {
    fn record_as(
        &self,
        decision: &Decision,
        policies: &Arc<PolicySet>,
        form: Form,
    ) -> Arc<portcullis::trace::StoredDecision>;
}

impl RecordAs for TraceStore {
    fn record_as(
        &self,
        decision: &Decision,
        policies: &Arc<PolicySet>,
        form: Form,
    ) -> Arc<portcullis::trace::StoredDecision> {
        match form {
            Form::Whole => self.record(decision),
            Form::Inputs => self.record_decided(decision, policies),
        }
    }
}

/// A ULID for insert `n`: the current time and `n` as the random part, so every id differs.
fn fresh_id(id: &mut String, millis: u64, n: u128) {
    let mut buf = [0u8; ulid::ULID_LEN];
    id.clear();
    id.push_str(ulid::Ulid::from_parts(millis, n).array_to_str(&mut buf));
}

fn bench_store(c: &mut Criterion) {
    let decider = Decider::new();
    let mut group = c.benchmark_group("store");

    // 1. Record into a full store: every insert evicts the oldest record. A 403 with a full
    //    trace and an allow, each whole and as a record of inputs.
    for (kind, name) in [
        (Kind::FullTraceDeny, "record"),
        (Kind::Allow, "record_allow"),
    ] {
        for form in [Form::Whole, Form::Inputs] {
            let mut decision = decider.decide(kind, 1);
            check(&decision, kind);
            let store = TraceStore::new(CAPACITY);
            let millis = unix_now() * 1000;
            let next = Cell::new(0u128);
            let record = |store: &TraceStore, decision: &mut Decision| {
                let n = next.get();
                next.set(n + 1);
                fresh_id(&mut decision.id, millis, n);
                form.record(store, decision, &decider.policies)
            };
            for _ in 0..CAPACITY {
                record(&store, &mut decision);
            }
            assert_eq!(store.len(), CAPACITY);
            let name = match form {
                Form::Whole => name.to_owned(),
                Form::Inputs => format!("{name}_inputs"),
            };
            group.bench_function(name, |b| {
                b.iter(|| record(black_box(&store), &mut decision))
            });
            assert_eq!(store.len(), CAPACITY);
            let newest = store.list(&DecisionFilter::default(), 1);
            assert!(store.get(newest[0].id()).is_some());
        }
    }

    // The memory table's mix, each kind in turn.
    let mix = MIX;
    for form in [Form::Whole, Form::Inputs] {
        let mut decisions: Vec<Decision> = (mix.iter().enumerate())
            .map(|(i, &kind)| decider.decide(kind, i))
            .collect();
        let store = TraceStore::new(CAPACITY);
        let millis = unix_now() * 1000;
        let mut n = 0u128;
        let mut record = |store: &TraceStore| {
            let decision = &mut decisions[(n % mix.len() as u128) as usize];
            fresh_id(&mut decision.id, millis, n);
            n += 1;
            store.record_as(decision, &decider.policies, form)
        };
        for _ in 0..CAPACITY {
            record(&store);
        }
        let name = match form {
            Form::Whole => "record_mix",
            Form::Inputs => "record_mix_inputs",
        };
        group.bench_function(name, |b| b.iter(|| record(black_box(&store))));
    }

    // 2. List with a filter on a full store of a realistic mix; one record in four matches.
    let store = TraceStore::new(CAPACITY);
    let kinds = [Kind::Allow, Kind::FullTraceDeny, Kind::NoToken, Kind::Allow];
    for i in 0..CAPACITY {
        store.record(&decider.decide(kinds[i % kinds.len()], i));
    }
    let filter = DecisionFilter {
        service: Some("meme-game".into()),
        outcome: Some(Outcome::Deny),
        status: Some(403),
        ..Default::default()
    };
    let listed = store.list(&filter, 100);
    assert_eq!(listed.len(), 100);
    assert!(listed.iter().all(|r| r.decision().status == 403));
    group.bench_function("list_100_filtered", |b| {
        b.iter(|| store.list(black_box(&filter), 100))
    });

    // 3. What the Redis writer does per decision: the stored record rebuilt and written as
    //    JSON, and what a reading replica does: the JSON read back and capped.
    let shared = store.list(&DecisionFilter::default(), 1).remove(0);
    group.bench_function("shared_json_write", |b| {
        b.iter(|| serde_json::to_vec(black_box(&*shared)).unwrap())
    });
    group.bench_function("rebuild_decision", |b| {
        b.iter(|| black_box(&*shared).decision())
    });
    // The same read of a record that keeps only its inputs: the engine decides it again.
    let inputs_only = TraceStore::new(10).record_decided(&shared.decision(), &decider.policies);
    assert!(inputs_only.rebuilds());
    assert_eq!(inputs_only.decision(), shared.decision());
    group.bench_function("rebuild_decision_inputs", |b| {
        b.iter(|| black_box(&*inputs_only).decision())
    });
    // A writer batch as the Redis client sends it: 64 records as one JSON array in the
    // writer's own XADD, packed into the wire form.
    let chunk: Vec<_> = (0..64).map(|_| shared.clone()).collect();
    group.bench_function("shared_batch_of_64_packed", |b| {
        b.iter(|| {
            let mut pipe = redis::pipe();
            pipe.add_command(portcullis::server::shared::append_command(
                "s",
                1000,
                black_box(&chunk),
            ));
            pipe.get_packed_pipeline()
        })
    });
    let json = serde_json::to_vec(&*shared).unwrap();
    group.bench_function("shared_json_read", |b| {
        b.iter(|| {
            let d: Decision = serde_json::from_slice(black_box(&json)).unwrap();
            portcullis::trace::StoredDecision::of(&d)
        })
    });
    group.finish();
}

/// Whether the memory table should run: benchmarking (not `cargo test`'s single pass, not
/// `--list`), and no filter given that excludes it.
fn memory_table_wanted() -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    args.iter().any(|a| a == "--bench")
        && !args.iter().any(|a| a == "--list")
        && (filters.is_empty() || filters.iter().any(|f| "store/memory".contains(f.as_str())))
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(60)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));
    targets = bench_store
}

fn main() {
    if memory_table_wanted() {
        memory_table();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
