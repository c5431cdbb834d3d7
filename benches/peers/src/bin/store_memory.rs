//! The trace store's memory against its capacity (issue 8), 1,000 to 1,000,000 records,
//! filled with whole decisions on the meme-game request mix of the peer comparison (allows
//! and 403 denials with full traces, every URL distinct). Heap growth is counted by this
//! binary's global allocator (bytes requested minus bytes freed), so that it is the real
//! cost, beside the store's own accounting (`TraceStore::approx_bytes`).
//!
//! `cargo run --release --bin store_memory [-- CAPACITY...]`

use std::time::Instant;

use portcullis::trace::TraceStore;
use portcullis_peers::corpus;
use portcullis_peers::engines::Portcullis;

#[path = "../../../support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{CountingAllocator, live, set_counting};

// mimalloc underneath: the allocator of `portcullis serve`.
#[global_allocator]
static ALLOCATOR: CountingAllocator<mimalloc::MiMalloc> = CountingAllocator(mimalloc::MiMalloc);

fn main() {
    let capacities: Vec<usize> = {
        let given: Vec<usize> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with('-'))
            .map(|a| a.replace('_', "").parse().expect("a capacity"))
            .collect();
        if given.is_empty() {
            vec![1_000, 10_000, 100_000, 1_000_000]
        } else {
            given
        }
    };
    let key = corpus::encoding_key();
    let profiles = corpus::profiles(&key);
    let requests = corpus::requests(&profiles, 1200);
    let portcullis = Portcullis::new(&profiles);
    // Warm the verified-token cache, so that its growth is not counted as the store's.
    for req in &requests {
        portcullis.decide(req);
    }
    // The mix, and its allowed and its denied requests alone.
    let outcomes: Vec<bool> = requests
        .iter()
        .map(|r| portcullis.decide(r).is_allowed())
        .collect();
    let allowed: Vec<_> = requests
        .iter()
        .zip(&outcomes)
        .filter(|(_, a)| **a)
        .map(|(r, _)| r.clone())
        .collect();
    let denied: Vec<_> = requests
        .iter()
        .zip(&outcomes)
        .filter(|(_, a)| !**a)
        .map(|(r, _)| r.clone())
        .collect();

    println!(
        "trace store memory per record (the meme-game requests of the peer comparison, every URL \
         distinct): approx = TraceStore::approx_bytes / len; heap = bytes allocated minus freed \
         while filling, counted by the global allocator; allocs = live allocations per record"
    );
    println!(
        "{:<24} {:>10} {:>13} {:>11} {:>11} {:>10} {:>9}",
        "decisions", "capacity", "approx B/rec", "heap B/rec", "allocs/rec", "heap MiB", "fill"
    );
    let mix = format!("mix ({} allow, {} 403)", allowed.len(), denied.len());
    for capacity in capacities {
        row(&portcullis, &mix, &requests, capacity);
    }
    row(&portcullis, "200 allow only", &allowed, 10_000);
    row(&portcullis, "403 deny only", &denied, 10_000);
    let traced: usize = requests
        .iter()
        .map(|r| portcullis.decide(r).trace.len())
        .sum();
    println!(
        "inline sizes: Decision {} B, TraceEntry {} B, StoredDecision {} B; trace entries per \
         decision in the mix: {:.1}",
        std::mem::size_of::<portcullis::Decision>(),
        std::mem::size_of::<portcullis::TraceEntry>(),
        std::mem::size_of::<portcullis::trace::StoredDecision>(),
        traced as f64 / requests.len() as f64
    );
}

/// Fills a store of `capacity` with decisions on `requests` (cycled, each URL made distinct)
/// and prints what it took.
fn row(portcullis: &Portcullis, label: &str, requests: &[corpus::Request], capacity: usize) {
    set_counting(true);
    let started = Instant::now();
    let (bytes_before, allocs_before) = live();
    let store = TraceStore::new(capacity);
    for i in 0..capacity {
        let mut req = requests[i % requests.len()].clone();
        let base = req.url.split('?').next().expect("a URL").to_owned();
        req.url = format!("{base}?req={i}");
        let decision = portcullis.decide(&req);
        store.record(&decision);
    }
    let (bytes_after, allocs_after) = live();
    let elapsed = started.elapsed();
    assert_eq!(store.len(), capacity);
    let heap = bytes_after - bytes_before;
    let n = capacity as isize;
    println!(
        "{label:<24} {capacity:>10} {:>13} {:>11} {:>11} {:>10.1} {:>9.2?}",
        store.approx_bytes() / capacity,
        heap / n,
        (allocs_after - allocs_before) / n,
        heap as f64 / (1024.0 * 1024.0),
        elapsed
    );
    drop(store);
    set_counting(false);
}
