//! A `redis-server` for the benchmarks: a free loopback port, no persistence, killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    /// Starts one and waits (at most 10 s) until it listens.
    #[allow(dead_code)]
    pub fn start() -> Self {
        Self::start_on(None)
    }

    /// As [`RedisServer::start`], on the CPUs `cpus` (a `taskset` list) if given.
    pub fn start_on(cpus: Option<&str>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let child = on_cpus(cpus, "redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts (apt-get install -y redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `calls` of `cmdstat_<command>` in `INFO commandstats` (through `redis-cli`).
    #[allow(dead_code)]
    pub fn calls(&self, command: &str) -> u64 {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "INFO", "commandstats"])
            .output()
            .expect("redis-cli runs");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// `redis-benchmark -c 1 -t incr`'s p50 over `requests` requests, in µs, run on the CPUs
    /// `cpus` if given.
    #[allow(dead_code)]
    pub fn benchmark_incr_p50(&self, requests: u32, cpus: Option<&str>) -> f64 {
        let out = on_cpus(cpus, "redis-benchmark")
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "1",
                "-t",
                "incr",
                "--csv",
            ])
            .args(["--precision", "3", "-n", &requests.to_string()])
            .output()
            .expect("redis-benchmark runs (it comes with redis-server)");
        let text = String::from_utf8_lossy(&out.stdout);
        // "INCR","<rps>","<avg>","<min>","<p50>",... in milliseconds.
        let p50_ms: f64 = text
            .lines()
            .find(|l| l.starts_with("\"INCR\""))
            .and_then(|l| l.split(',').nth(4))
            .and_then(|v| v.trim_matches('"').parse().ok())
            .unwrap_or_else(|| panic!("no INCR line in redis-benchmark's output: {text}"));
        p50_ms * 1000.0
    }
}

/// `program`, through `taskset -c <cpus>` if `cpus` is given.
fn on_cpus(cpus: Option<&str>, program: &str) -> Command {
    match cpus {
        Some(cpus) => {
            let mut command = Command::new("taskset");
            command.args(["-c", cpus, program]);
            command
        }
        None => Command::new(program),
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
