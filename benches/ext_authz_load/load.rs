//! The gRPC load generator: checks each probe once, then loops Checks over HTTP/2
//! connections and measures latency and CPU per call.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use portcullis::proto::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use portcullis::proto::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use tonic::transport::{Channel, Endpoint};

use crate::cpu::{cores_used, cpu_of, cpu_snapshot};
use crate::requests::{Answer, Probe, answer_of};
use crate::settings::Settings;

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub(crate) struct Measurement {
    pub(crate) label: String,
    pub(crate) histogram: Histogram<u64>,
    pub(crate) errors: u64,
    pub(crate) wrong: u64,
    pub(crate) seconds: f64,
    /// Core-seconds used by the servers and the load generator in the window.
    pub(crate) server_cpu: f64,
    pub(crate) client_cpu: f64,
    pub(crate) cores: String,
}

impl Measurement {
    pub(crate) fn rate(&self) -> f64 {
        self.histogram.len() as f64 / self.seconds
    }

    pub(crate) fn quantile_ms(&self, q: f64) -> f64 {
        self.histogram.value_at_quantile(q) as f64 / 1000.0
    }

    pub(crate) fn row(&self) -> String {
        format!(
            "{:<34} {:>10.0} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.2} {:>7} {:>6}",
            self.label,
            self.rate(),
            self.quantile_ms(0.50),
            self.quantile_ms(0.90),
            self.quantile_ms(0.99),
            self.quantile_ms(0.999),
            self.histogram.max() as f64 / 1000.0,
            self.errors,
            self.wrong,
        )
    }
}

pub(crate) fn table_header(first: &str) -> String {
    format!(
        "{first:<34} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>6}\n{}",
        "per second",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "errors",
        "wrong",
        "-".repeat(34 + 11 + 9 * 5 + 8 + 7)
    )
}

pub(crate) async fn connect(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"))
}

/// Sends each probe once and panics unless it is answered as expected; for Portcullis this
/// also puts both tokens in the verified-token cache. Returns the answers, in probe order.
pub(crate) async fn verify(
    addr: SocketAddr,
    probes: &[(Probe, usize)],
    ceiling: bool,
) -> Vec<(CheckRequest, CheckResponse)> {
    let mut client = AuthorizationClient::new(connect(addr).await);
    let mut answers = Vec::new();
    for (probe, _) in probes {
        let response =
            tokio::time::timeout(Duration::from_secs(10), client.check(probe.request.clone()))
                .await
                .unwrap_or_else(|_| panic!("{}: no answer within 10 s", probe.label))
                .unwrap_or_else(|e| panic!("{}: Check failed: {e}", probe.label))
                .into_inner();
        let expected = if ceiling { Answer::Allow } else { probe.expect };
        let got = answer_of(&response);
        assert_eq!(
            got, expected,
            "{}: expected {expected:?}, got {got:?}: {response:?}",
            probe.label
        );
        if !ceiling {
            println!(
                "  checked {:<38} {:<10} request {:>4} B, response {:>4} B (protobuf)",
                probe.label,
                match got {
                    Answer::Allow => "allow".to_owned(),
                    Answer::Deny(code) => format!("deny {code}"),
                    Answer::Malformed => "malformed".to_owned(),
                },
                prost::Message::encoded_len(&probe.request),
                prost::Message::encoded_len(&response),
            );
        }
        answers.push((probe.request.clone(), response));
    }
    answers
}

/// `streams` tasks over `connections` HTTP/2 connections, each looping Check calls.
pub(crate) async fn load(
    label: &str,
    addr: SocketAddr,
    mix: &Arc<Vec<Probe>>,
    ceiling: bool,
    settings: &Settings,
    ticks: f64,
) -> Measurement {
    load_in(label, addr, mix, ceiling, settings, ticks, &[]).await
}

/// [`load`], with the CPU of the processes `others` (name, pid) read too: a server in a
/// process of its own is named `servers`.
pub(crate) async fn load_in(
    label: &str,
    addr: SocketAddr,
    mix: &Arc<Vec<Probe>>,
    ceiling: bool,
    settings: &Settings,
    ticks: f64,
    others: &[(&'static str, u32)],
) -> Measurement {
    let mut channels = Vec::new();
    for _ in 0..settings.connections {
        channels.push(connect(addr).await);
    }
    let started = Instant::now();
    let measure_from = started + Duration::from_secs_f64(settings.warmup);
    let end = measure_from + Duration::from_secs_f64(settings.seconds);
    let mut tasks = Vec::new();
    for stream in 0..settings.streams {
        let mut client = AuthorizationClient::new(channels[stream % channels.len()].clone());
        let mix = mix.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram = histogram();
            let (mut errors, mut wrong) = (0u64, 0u64);
            // Each task starts at its own place in the mix.
            let mut next = (stream * 37) % mix.len();
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let probe = &mix[next];
                next = (next + 1) % mix.len();
                let result = client.check(probe.request.clone()).await;
                let elapsed = sent.elapsed();
                if sent < measure_from {
                    continue;
                }
                match result {
                    Ok(response) => {
                        let expected = if ceiling { Answer::Allow } else { probe.expect };
                        if answer_of(response.get_ref()) != expected {
                            wrong += 1;
                        }
                        histogram.saturating_record(elapsed.as_micros() as u64);
                    }
                    Err(_) => errors += 1,
                }
            }
            (histogram, errors, wrong)
        }));
    }
    let window = measure_window(measure_from, end, others).await;
    let (total, errors, wrong) = join_tallies(label, tasks).await;
    Measurement::of(
        label,
        (total, errors, wrong),
        settings.seconds,
        &window,
        ticks,
    )
}

/// CPU snapshots at both ends of a measured window.
pub(crate) struct Window {
    before: BTreeMap<&'static str, u64>,
    after: BTreeMap<&'static str, u64>,
    seconds: f64,
}

/// Waits for the window from `measure_from` to `end`, taking the CPU snapshots (of this
/// process and of `others`) at its ends.
pub(crate) async fn measure_window(
    measure_from: Instant,
    end: Instant,
    others: &[(&'static str, u32)],
) -> Window {
    tokio::time::sleep_until(tokio::time::Instant::from_std(measure_from)).await;
    let before = cpu_snapshot(others);
    let started = Instant::now();
    tokio::time::sleep_until(tokio::time::Instant::from_std(end)).await;
    Window {
        before,
        after: cpu_snapshot(others),
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// What one load task counted: latencies of the calls answered in the window, the failed
/// calls and the wrongly answered ones.
pub(crate) type Tally = (Histogram<u64>, u64, u64);

/// The load tasks' tallies added up; panics if any is still running 30 s after the end.
pub(crate) async fn join_tallies(label: &str, tasks: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut total = (histogram(), 0, 0);
    let joined = tokio::time::timeout(Duration::from_secs(30), async {
        for task in tasks {
            let (h, e, w) = task.await.expect("a load task does not panic");
            total.0.add(&h).expect("histograms with the same bounds");
            total.1 += e;
            total.2 += w;
        }
    })
    .await;
    assert!(
        joined.is_ok(),
        "{label}: calls still outstanding 30 s after the end"
    );
    total
}

impl Measurement {
    /// The measurement of the calls of `tally`, answered in `window` (`seconds` long).
    pub(crate) fn of(
        label: &str,
        (histogram, errors, wrong): Tally,
        seconds: f64,
        window: &Window,
        ticks: f64,
    ) -> Self {
        let (before, after) = (&window.before, &window.after);
        Self {
            label: label.to_owned(),
            histogram,
            errors,
            wrong,
            seconds,
            server_cpu: cpu_of(before, after, "servers", ticks),
            client_cpu: cpu_of(before, after, "load generator", ticks),
            cores: cores_used(before, after, window.seconds, ticks),
        }
    }
}
