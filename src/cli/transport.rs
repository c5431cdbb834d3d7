//! Flags of `portcullis serve` about limits and TLS of both listeners.

use std::path::PathBuf;
use std::time::Duration;

use portcullis::server::transport::{TlsFiles, TransportConfig};

#[derive(clap::Args)]
#[command(next_help_heading = "Limits and TLS (both listeners)")]
pub(crate) struct TransportArgs {
    /// Requests in progress at once over both listeners. Past it, requests are refused at
    /// once instead of queued: gRPC RESOURCE_EXHAUSTED, HTTP 503 SERVICE_UNAVAILABLE. gRPC
    /// health, /healthz, /readyz and /metrics do not count and are never refused.
    #[arg(
        long,
        env = "PORTCULLIS_MAX_CONCURRENT_REQUESTS",
        default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    max_concurrent_requests: u32,
    /// How long one request may take: gRPC DEADLINE_EXCEEDED, HTTP 503 past it. A shorter
    /// grpc-timeout sent by the client applies instead.
    #[arg(long, env = "PORTCULLIS_REQUEST_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// Total size of a request's header names and values: HTTP 431 past it; on gRPC,
    /// HTTP/2's header list size (plus 32 bytes per header).
    #[arg(long, env = "PORTCULLIS_MAX_HEADER_BYTES", default_value = "64KiB", value_parser = parse_size)]
    max_header_bytes: usize,
    /// Header fields in one HTTP request: HTTP 431 past it.
    #[arg(
        long,
        env = "PORTCULLIS_MAX_HEADERS",
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    max_headers: u32,
    /// Size of an HTTP request body: HTTP 413 past it. No endpoint but the Sideband API reads
    /// a body, so gateways should not forward one.
    #[arg(long, env = "PORTCULLIS_MAX_BODY_BYTES", default_value = "16KiB", value_parser = parse_size)]
    max_body_bytes: usize,
    /// Size of a Sideband API call's body (`/sideband/*`, instead of --max-body-bytes): HTTP
    /// 413 past it, which the kits pass on to the client.
    #[arg(long, env = "PORTCULLIS_SIDEBAND_MAX_BODY", default_value = "1MiB", value_parser = parse_size)]
    sideband_max_body: usize,
    /// Size of one gRPC request message (a Check carries the original request's headers):
    /// gRPC OUT_OF_RANGE past it.
    #[arg(long, env = "PORTCULLIS_MAX_GRPC_MESSAGE", default_value = "1MiB", value_parser = parse_size)]
    max_grpc_message: usize,
    /// Streams open at once on one HTTP/2 connection.
    #[arg(
        long,
        env = "PORTCULLIS_MAX_CONCURRENT_STREAMS",
        default_value_t = 256,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    max_concurrent_streams: u32,
    /// PEM certificate chain (server certificate first): serve both listeners over TLS.
    #[arg(long, env = "PORTCULLIS_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "PORTCULLIS_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificates: require a client certificate issued by one of them (mutual TLS)
    /// on both listeners; clients without one fail the handshake.
    #[arg(long, env = "PORTCULLIS_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

impl TransportArgs {
    pub(crate) fn config(&self) -> TransportConfig {
        TransportConfig {
            max_concurrent_requests: self.max_concurrent_requests as usize,
            request_timeout: self.request_timeout,
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers as usize,
            max_body_bytes: self.max_body_bytes,
            max_sideband_body_bytes: self.sideband_max_body,
            max_grpc_message: self.max_grpc_message,
            max_concurrent_streams: self.max_concurrent_streams,
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.tls_client_ca.clone(),
                }),
                _ => None,
            },
        }
    }
}

/// A size in bytes: a number, optionally with a binary unit (`64KiB`, `1MiB`, `64k`).
fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let unit_bytes: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => 0,
    };
    digits
        .parse::<usize>()
        .ok()
        .filter(|_| unit_bytes > 0)
        .and_then(|n| n.checked_mul(unit_bytes))
        .ok_or_else(|| {
            format!("`{text}` is not a size: write bytes, or KiB or MiB, such as 65536 or 64KiB")
        })
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("64k"), Ok(64 * 1024));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2 MiB"), Ok(2 << 20));
        for bad in [
            "",
            "KiB",
            "1.5MiB",
            "12 parsecs",
            "-1",
            "99999999999999999999G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
