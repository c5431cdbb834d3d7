//! The report of a run: the tables of gRPC and Envoy runs, CPU per call, and the issues' targets.

use crate::http::HttpTarget;
use crate::load::{Measurement, table_header};
use crate::settings::Settings;
use crate::targets::{Servers, Target};

/// Prints the tables and the verdicts on the targets of issues 3, 9, 16 and 18.
pub(crate) fn report(
    settings: &Settings,
    servers: &Servers,
    cores: usize,
    grpc_runs: &[(Target, Measurement)],
    http_runs: &[(HttpTarget, Measurement)],
    envoy_runs: &[Measurement],
) {
    if !grpc_runs.is_empty() {
        grpc_report(settings, servers, cores, grpc_runs);
    }

    if !http_runs.is_empty() {
        http_report(settings, http_runs);
    }

    if !envoy_runs.is_empty() {
        println!(
            "\nThrough Envoy {} ({} worker{}): HTTP/1.1 keep-alive requests to a tiny upstream, \
             allowed requests only (player POST submit, viewer GET leaderboard, alternating)",
            settings
                .envoy
                .as_deref()
                .map_or(String::new(), |p| p.display().to_string()),
            settings.envoy_workers,
            if settings.envoy_workers == 1 { "" } else { "s" }
        );
        println!("{}", table_header("setup"));
        for run in envoy_runs {
            println!("{}", run.row());
        }
        println!("\nCPU in the measured window (cores busy):");
        for run in envoy_runs {
            println!("  {:<34} {}", run.label, run.cores);
        }
        println!("\n  3. latency ext_authz adds over Envoy alone (ext_authz − no filter):");
        for pair in envoy_runs.chunks(2) {
            if let [without, with] = pair {
                println!(
                    "     {:<28} p50 +{:.3} ms ({:.3} → {:.3}), p99 +{:.3} ms ({:.3} → {:.3}), \
                     throughput {:.0} → {:.0}/s",
                    with.label.replace("Envoy, ext_authz, ", ""),
                    with.quantile_ms(0.5) - without.quantile_ms(0.5),
                    without.quantile_ms(0.5),
                    with.quantile_ms(0.5),
                    with.quantile_ms(0.99) - without.quantile_ms(0.99),
                    without.quantile_ms(0.99),
                    with.quantile_ms(0.99),
                    without.rate(),
                    with.rate(),
                );
            }
        }
    }
}

/// The HTTP/1.1 table, CPU per call, and the verdicts of issue 16 (the Sideband API against
/// `/v1/authorize`) and issue 18's target 5 (the HTTP interfaces against an empty server).
fn http_report(settings: &Settings, runs: &[(HttpTarget, Measurement)]) {
    println!(
        "\nHTTP/1.1 keep-alive on loopback, {} connections, the same mix",
        settings.streams
    );
    println!("{}", table_header("target"));
    for (_, run) in runs {
        println!("{}", run.row());
    }
    println!("\nCPU in the measured window (cores busy):");
    cpu_per_call(runs.iter().map(|(_, r)| r));
    let rate = |target: HttpTarget| -> f64 {
        runs.iter()
            .filter(|(t, _)| *t == target)
            .map(|(_, r)| r.rate())
            .sum::<f64>()
    };
    let known = |r: f64| r.is_finite() && r > 0.0;
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let sideband = rate(HttpTarget::Sideband) / rate(HttpTarget::Authorize);
    if known(sideband) {
        println!(
            "\n  Issue 16: /sideband/request ≥ 90% of /v1/authorize's throughput: {:.1}% → {}",
            sideband * 100.0,
            verdict(sideband >= 0.9)
        );
    }
    for (target, name) in [
        (HttpTarget::Authorize, "/v1/authorize"),
        (HttpTarget::Sideband, "/sideband/request"),
    ] {
        let share = rate(target) / rate(HttpTarget::Ceiling);
        if known(share) {
            println!(
                "  Issue 18, target 5: {name} ≥ 60% of the empty HTTP server's throughput: {:.1}% → {}",
                share * 100.0,
                verdict(share >= 0.6)
            );
        }
    }
}

/// The gRPC table, CPU per call, the store after the run, and the verdicts of issues 3 and 9.
fn grpc_report(
    settings: &Settings,
    servers: &Servers,
    cores: usize,
    grpc_runs: &[(Target, Measurement)],
) {
    println!(
        "\ngRPC ext_authz Check on loopback, mix of allows and denials (60% allow); the limit \
         targets: every call a reaction, allowed and counted"
    );
    println!("{}", table_header("target"));
    for (_, run) in grpc_runs {
        println!("{}", run.row());
    }
    println!("\nCPU in the measured window (cores busy; the machine has {cores}):");
    cpu_per_call(grpc_runs.iter().map(|(_, r)| r));
    let sum = |target: Target| -> f64 {
        grpc_runs
            .iter()
            .filter(|(t, _)| *t == target)
            .map(|(_, r)| r.rate())
            .sum::<f64>()
    };
    let ratio = sum(Target::Memory) / sum(Target::Ceiling);
    let replay_ratio = sum(Target::Replay) / sum(Target::Ceiling);
    let decision_ratio = sum(Target::Memory) / sum(Target::Replay);
    let redis_ratio = sum(Target::Redis) / sum(Target::Memory);
    let shadow_ratio = sum(Target::Shadow) / sum(Target::Memory);
    let limit_ratio = sum(Target::LimitRedis) / sum(Target::LimitLocal);
    let ratio_known = ratio.is_finite() && ratio > 0.0;
    let store = &servers.state.store;
    println!(
        "\nrecent-decisions store after the run: {} of {} records, ≈ {:.1} MiB",
        store.len(),
        store.capacity(),
        store.approx_bytes() as f64 / (1024.0 * 1024.0)
    );

    // What the Redis-backed servers' metrics say of their Redis work.
    let metric_lines = |state: &portcullis::server::AppState, prefix: &str| -> String {
        let rendered = state.metrics.render();
        let lines: Vec<&str> = rendered.lines().filter(|l| l.starts_with(prefix)).collect();
        lines.join("; ")
    };
    if let Some((_, state)) = &servers.limit_redis {
        println!(
            "Portcullis counting its limit in Redis, counts: {}",
            metric_lines(state, "portcullis_rate_limit_counts")
        );
    }
    if let Some((_, state)) = &servers.portcullis_redis {
        println!(
            "Redis-backed Portcullis, shared records: {}",
            metric_lines(state, "portcullis_shared_trace_records_total")
        );
    }

    let portcullis: Vec<&Measurement> = grpc_runs
        .iter()
        .filter(|(t, _)| *t == Target::Memory)
        .map(|(_, r)| r)
        .collect();
    let worst_rate = portcullis
        .iter()
        .map(|r| r.rate())
        .fold(f64::INFINITY, f64::min);
    let worst_p99 = portcullis
        .iter()
        .map(|r| r.quantile_ms(0.99))
        .fold(0.0, f64::max);
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!("\nTargets (issue 3):");
    if !portcullis.is_empty() {
        println!(
            "  1. ≥ 25,000 decisions/s with p99 ≤ 5 ms at {} streams: {:.0}/s, p99 {:.3} ms → {}",
            settings.streams,
            worst_rate,
            worst_p99,
            verdict(worst_rate >= 25_000.0 && worst_p99 <= 5.0)
        );
    }
    if ratio_known {
        println!(
            "  2. ≥ 80% of the ceiling's throughput: {:.1}% → {}",
            ratio * 100.0,
            verdict(ratio >= 0.8)
        );
    }
    let known = |r: f64| r.is_finite() && r > 0.0;
    if known(replay_ratio) {
        println!(
            "     the replay (Portcullis' answers, no decision) reaches {:.1}% of the ceiling: \
             the most any server sending these answers reaches here",
            replay_ratio * 100.0
        );
    }
    if known(decision_ratio) {
        println!(
            "     Portcullis reaches {:.1}% of the replay: what deciding costs",
            decision_ratio * 100.0
        );
    }
    if known(shadow_ratio) {
        println!(
            "  Issue 19: with a shadow set as large as the active one ≥ 85% of the throughput without: {:.1}% → {}",
            shadow_ratio * 100.0,
            verdict(shadow_ratio >= 0.85)
        );
    }
    if known(limit_ratio) {
        println!(
            "  Issue 18, target 6: on the reaction mix, every call counted, the limit in Redis \
             ≥ 80% of the throughput with it counted locally: {:.1}% → {}",
            limit_ratio * 100.0,
            verdict(limit_ratio >= 0.8)
        );
    }
    if redis_ratio.is_finite() && redis_ratio > 0.0 {
        println!(
            "  Issue 9: Redis trace store ≥ 90% of the memory store's throughput: {:.1}% → {}",
            redis_ratio * 100.0,
            verdict(redis_ratio >= 0.9)
        );
    }
}

/// A line per run: the cores each group kept busy, and the CPU per call.
fn cpu_per_call<'a>(runs: impl Iterator<Item = &'a Measurement>) {
    for run in runs {
        let calls = run.histogram.len().max(1) as f64;
        println!(
            "  {:<34} {}; µs of CPU per call: server {:.1}, load generator {:.1}",
            run.label,
            run.cores,
            run.server_cpu * 1e6 / calls,
            run.client_cpu * 1e6 / calls
        );
    }
}

/// The tracing comparison (issue 20): throughput and CPU per call against tracing off, and
/// the targets (100% sampling ≥ 80% of off, 1% ≥ 95%).
pub(crate) fn tracing_report(runs: &[crate::tracing::TracingRun]) {
    use crate::tracing::Setup;
    if runs.is_empty() {
        return;
    }
    println!(
        "\nTracing (issue 20): `portcullis serve` processes on the gRPC mix, spans exported \
         over OTLP gRPC to a receiver in the bench"
    );
    println!("{}", table_header("setup"));
    for run in runs {
        println!("{}", run.measurement.row());
    }
    println!("\nCPU in the measured window (cores busy), CPU per call, spans received:");
    for run in runs {
        let m = &run.measurement;
        let calls = m.histogram.len().max(1) as f64;
        println!(
            "  {:<34} {}; µs of CPU per call: server {:.1}; spans received {} (warm-up included)",
            m.label,
            m.cores,
            m.server_cpu * 1e6 / calls,
            run.spans
        );
    }
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let sum_rate = |setup: Setup| {
        (runs.iter().filter(|r| r.setup == setup))
            .map(|r| r.measurement.rate())
            .sum::<f64>()
    };
    let cpu_per_call = |setup: Setup| {
        let (cpu, calls) =
            (runs.iter().filter(|r| r.setup == setup)).fold((0.0, 0.0), |(c, n), r| {
                (
                    c + r.measurement.server_cpu,
                    n + r.measurement.histogram.len() as f64,
                )
            });
        cpu * 1e6 / calls.max(1.0)
    };
    let off = sum_rate(Setup::Off).max(1.0);
    if sum_rate(Setup::Baseline) > 0.0 {
        println!(
            "\n  tracing off: {:.1}% of the build before tracing's throughput; CPU per call {:.1} µs \
             against {:.1} µs (target: unchanged within noise)",
            off / sum_rate(Setup::Baseline) * 100.0,
            cpu_per_call(Setup::Off),
            cpu_per_call(Setup::Baseline)
        );
    }
    let full = sum_rate(Setup::Full) / off;
    let one = sum_rate(Setup::OnePercent) / off;
    println!(
        "\n  100% sampling: {:.1}% of tracing-off throughput, all rounds (target ≥ 80%: {})",
        full * 100.0,
        verdict(full >= 0.8)
    );
    println!(
        "  1% sampling:   {:.1}% of tracing-off throughput, all rounds (target ≥ 95%: {})",
        one * 100.0,
        verdict(one >= 0.95)
    );
}
