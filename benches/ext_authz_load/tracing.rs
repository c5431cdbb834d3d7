//! The tracing comparison (issue 20): the real `portcullis serve` binary three times, with
//! tracing off, with every decision's span exported (sampling 1.0) and with 1% exported, to
//! an OTLP gRPC receiver in this process that counts what it gets; with
//! `LOAD_TRACING_BASELINE`, first another binary (the build before tracing) with no flags.
//! Each server is loaded with the same gRPC mix in turn, in the same run, its CPU read from
//! `/proc/<pid>`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

use crate::load::{Measurement, load_in, verify};
use crate::requests::Probe;
use crate::settings::Settings;
use crate::{POLICY_DIR, STARTUP};

/// Counts the spans it receives; answers every export with success.
struct CountingReceiver(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for CountingReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The receiver, on a runtime of its own (one thread named `otlp-receiver`, which the CPU
/// table shows among "other bench threads").
fn start_receiver() -> (SocketAddr, Arc<AtomicU64>) {
    let received = Arc::new(AtomicU64::new(0));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(CountingReceiver(received.clone()));
    std::thread::Builder::new()
        .name("otlp-receiver".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let _ = tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                    .await;
            });
        })
        .unwrap();
    (addr, received)
}

/// `portcullis serve` with `extra` flags; killed when dropped.
struct Serve(Child, SocketAddr);

impl Serve {
    fn start(binary: &str, extra: &[String]) -> Serve {
        let mut child = Command::new(binary)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["serve", "--policies", POLICY_DIR])
            .args([
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(Stdio::piped())
            // The log (audit lines among them) goes where the in-process servers' goes by
            // default: nowhere, but written.
            .stderr(Stdio::null())
            .spawn()
            .expect("portcullis serve starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(STARTUP)
            .expect("portcullis serve reports its listeners");
        let grpc = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("grpc="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no grpc= in `{line}`"));
        Serve(child, grpc)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One tracing run: its measurement, and the spans the receiver got during it.
pub(crate) struct TracingRun {
    pub(crate) setup: Setup,
    pub(crate) measurement: Measurement,
    pub(crate) spans: u64,
}

/// Which server a tracing run loaded.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Setup {
    /// `LOAD_TRACING_BASELINE`'s binary.
    Baseline,
    Off,
    Full,
    OnePercent,
}

/// The three set-ups in turn (each `settings.rounds` times), loaded as the gRPC targets are.
pub(crate) async fn tracing_runs(
    settings: &Settings,
    mix: &Arc<Vec<Probe>>,
    probes: &[(Probe, usize)],
    ticks: f64,
) -> Vec<TracingRun> {
    let (receiver, received) = start_receiver();
    let endpoint = format!("http://{receiver}");
    let this = env!("CARGO_BIN_EXE_portcullis").to_owned();
    let mut setups: Vec<(Setup, &str, String, Vec<String>)> = Vec::new();
    if let Some(baseline) = &settings.tracing_baseline {
        setups.push((
            Setup::Baseline,
            "serve, build before tracing",
            baseline.clone(),
            vec![],
        ));
    }
    setups.extend([
        (Setup::Off, "serve, tracing off", this.clone(), vec![]),
        (
            Setup::Full,
            "serve, tracing 100%",
            this.clone(),
            vec![
                "--otlp-endpoint".into(),
                endpoint.clone(),
                "--otlp-sample".into(),
                "1".into(),
            ],
        ),
        (
            Setup::OnePercent,
            "serve, tracing 1%",
            this,
            vec![
                "--otlp-endpoint".into(),
                endpoint.clone(),
                "--otlp-sample".into(),
                "0.01".into(),
            ],
        ),
    ]);
    let mut runs = Vec::new();
    for round in 1..=settings.rounds {
        for (setup, label, binary, flags) in &setups {
            let label = if settings.rounds > 1 {
                format!("{label} (round {round})")
            } else {
                (*label).to_owned()
            };
            let server = Serve::start(binary, flags);
            verify(server.1, probes, false).await;
            // What the checks exported is not the load's.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before = received.load(Ordering::Relaxed);
            let measurement = load_in(
                &label,
                server.1,
                mix,
                false,
                settings,
                ticks,
                &[("servers", server.0.id())],
            )
            .await;
            // The spans of the last calls are exported within the processor's interval.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let spans = received.load(Ordering::Relaxed) - before;
            eprintln!("  {}   [cores: {}]", measurement.row(), measurement.cores);
            runs.push(TracingRun {
                setup: *setup,
                measurement,
                spans,
            });
        }
    }
    runs
}
