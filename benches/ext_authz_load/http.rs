//! HTTP/1.1 keep-alive load on Portcullis' HTTP interfaces with the requests of the gRPC mix:
//! `/v1/authorize` as nginx's `auth_request` asks, `/sideband/request` as the PingOne
//! Authorize gateway kits ask, and the same sideband calls to an empty hyper server that
//! answers 200 without looking (the HTTP ceiling). One connection per stream, as HTTP/1.1
//! gateways keep them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use portcullis::proto::envoy::config::core::v3::address;
use tokio::net::{TcpListener, TcpStream};

use crate::load::{Measurement, Tally, histogram, join_tallies, measure_window};
use crate::requests::{Answer, Probe};
use crate::settings::Settings;

/// The shared secret of the bench's Sideband API.
pub(crate) const SIDEBAND_SECRET: &str = "bench-sideband-secret";

/// Which HTTP server a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HttpTarget {
    /// The empty server: any 200 is right.
    Ceiling,
    Authorize,
    Sideband,
}

/// How a gRPC probe becomes the call of an HTTP interface.
pub(crate) type MakeCall = fn(&Probe) -> HttpCall;

/// One request of the mix, ready to send, with the answer it must get.
#[derive(Clone)]
pub(crate) struct HttpCall {
    method: Method,
    path: &'static str,
    headers: HeaderMap,
    body: Bytes,
    /// `None`: allowed; else the status of the denial.
    deny: Option<u16>,
}

/// The request a gRPC probe describes, as the HTTP interfaces get it: method, full URL, the
/// request's own headers (pseudo-headers left out), the client, and the denial expected.
struct Original<'a> {
    method: &'a str,
    url: String,
    headers: Vec<(&'a str, &'a str)>,
    client: &'a str,
    deny: Option<u16>,
}

impl<'a> Original<'a> {
    fn of(probe: &'a Probe) -> Self {
        let attributes = probe
            .request
            .attributes
            .as_ref()
            .expect("a probe has attributes");
        let http = attributes
            .request
            .as_ref()
            .and_then(|r| r.http.as_ref())
            .expect("a probe has an HTTP request");
        let client = attributes
            .source
            .as_ref()
            .and_then(|s| s.address.as_ref())
            .and_then(|a| match &a.address {
                Some(address::Address::SocketAddress(s)) => Some(s.address.as_str()),
                _ => None,
            })
            .unwrap_or("");
        let mut headers: Vec<(&str, &str)> = http
            .headers
            .iter()
            .filter(|(n, _)| !n.starts_with(':'))
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        headers.sort();
        headers.insert(0, ("host", http.host.as_str()));
        Self {
            method: &http.method,
            url: format!("{}://{}{}", http.scheme, http.host, http.path),
            headers,
            client,
            deny: match probe.expect {
                Answer::Allow => None,
                Answer::Deny(code) => Some(code as u16),
                Answer::Malformed => unreachable!("no probe expects a malformed answer"),
            },
        }
    }
}

fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        map.append(
            HeaderName::try_from(*name).expect("a header name"),
            HeaderValue::try_from(*value).expect("a header value"),
        );
    }
    map
}

impl HttpCall {
    /// What nginx's `auth_request` sends for `probe`'s request: a GET carrying the original
    /// headers and the method, URL and client in `X-Original-*` / `X-Real-IP`.
    pub(crate) fn authorize(probe: &Probe) -> Self {
        let original = Original::of(probe);
        // nginx's subrequest has a host of its own (the PDP's, set when sent) and no body
        // (`proxy_pass_request_body off`, `Content-Length ""`).
        let mut pairs: Vec<(&str, &str)> = original
            .headers
            .iter()
            .copied()
            .filter(|(n, _)| !matches!(*n, "host" | "content-length"))
            .collect();
        pairs.push(("x-original-method", original.method));
        pairs.push(("x-original-url", &original.url));
        pairs.push(("x-real-ip", original.client));
        Self {
            method: Method::GET,
            path: "/v1/authorize",
            headers: header_map(&pairs),
            body: Bytes::new(),
            deny: original.deny,
        }
    }

    /// What the Kong `ping-auth` kit sends for `probe`'s request.
    pub(crate) fn sideband(probe: &Probe) -> Self {
        let original = Original::of(probe);
        let headers: Vec<serde_json::Value> = original
            .headers
            .iter()
            .map(|(n, v)| serde_json::json!({ *n: *v }))
            .collect();
        let body = serde_json::json!({
            "source_ip": original.client,
            "source_port": "41234",
            "method": original.method,
            "url": original.url,
            "headers": headers,
            "http_version": "1.1",
        })
        .to_string();
        Self {
            method: Method::POST,
            path: "/sideband/request",
            headers: header_map(&[
                ("content-type", "application/json"),
                ("client-token", SIDEBAND_SECRET),
            ]),
            body: Bytes::from(body),
            deny: original.deny,
        }
    }

    fn request(&self, host: &HeaderValue) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = hyper::Uri::from_static(self.path);
        let headers = request.headers_mut();
        headers.clone_from(&self.headers);
        headers.insert(hyper::header::HOST, host.clone());
        request
    }

    /// Whether `target` answered this call as it must.
    fn answered(&self, target: HttpTarget, status: u16, body: &[u8]) -> bool {
        const DENY: &[u8] = b"{\"response\":{\"response_code\":\"";
        match target {
            HttpTarget::Ceiling => status == 200,
            HttpTarget::Authorize => status == self.deny.unwrap_or(200),
            HttpTarget::Sideband => {
                status == 200
                    && match self.deny {
                        None => !body.starts_with(DENY),
                        Some(code) => body
                            .strip_prefix(DENY)
                            .is_some_and(|rest| rest.starts_with(code.to_string().as_bytes())),
                    }
            }
        }
    }
}

/// One connection looping the mix from `start` in it until `end`; the calls sent after
/// `measure_from` count. A failed call costs the connection, as it would a gateway's.
async fn connection(
    addr: SocketAddr,
    calls: Arc<Vec<HttpCall>>,
    target: HttpTarget,
    start: usize,
    measure_from: Instant,
    end: Instant,
) -> Tally {
    let (mut latencies, mut errors, mut wrong) = (histogram(), 0, 0);
    let host = HeaderValue::from_str(&addr.to_string()).expect("an address is a host");
    let mut next = start % calls.len();
    while Instant::now() < end {
        let Ok(tcp) = TcpStream::connect(addr).await else {
            errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await
        else {
            errors += 1;
            continue;
        };
        tokio::spawn(conn);
        loop {
            let sent = Instant::now();
            if sent >= end {
                return (latencies, errors, wrong);
            }
            let call = &calls[next];
            next = (next + 1) % calls.len();
            let answer = match sender.ready().await {
                Ok(()) => match sender.send_request(call.request(&host)).await {
                    Ok(response) => read(response).await,
                    Err(_) => None,
                },
                Err(_) => None,
            };
            let elapsed = sent.elapsed();
            let counted = sent >= measure_from;
            match answer {
                Some((status, body)) if counted => {
                    if !call.answered(target, status, &body) {
                        wrong += 1;
                    }
                    latencies.saturating_record(elapsed.as_micros() as u64);
                }
                Some(_) => {}
                None => {
                    errors += u64::from(counted);
                    break;
                }
            }
        }
    }
    (latencies, errors, wrong)
}

async fn read(response: Response<hyper::body::Incoming>) -> Option<(u16, Bytes)> {
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, body))
}

/// `LOAD_STREAMS` keep-alive connections, each looping the calls, measured as the gRPC load is.
pub(crate) async fn load_http(
    label: &str,
    addr: SocketAddr,
    calls: &Arc<Vec<HttpCall>>,
    target: HttpTarget,
    settings: &Settings,
    ticks: f64,
) -> Measurement {
    let measure_from = Instant::now() + Duration::from_secs_f64(settings.warmup);
    let end = measure_from + Duration::from_secs_f64(settings.seconds);
    let tasks: Vec<_> = (0..settings.streams)
        .map(|i| {
            tokio::spawn(connection(
                addr,
                calls.clone(),
                target,
                i * 37,
                measure_from,
                end,
            ))
        })
        .collect();
    let window = measure_window(measure_from, end, &[]).await;
    let tally = join_tallies(label, tasks).await;
    Measurement::of(label, tally, settings.seconds, &window, ticks)
}

/// Sends every probe's call once and panics unless `target` answers it as it must.
pub(crate) async fn verify_http(
    addr: SocketAddr,
    probes: &[(Probe, usize)],
    target: HttpTarget,
    call: MakeCall,
) {
    let tcp = TcpStream::connect(addr).await.expect("the server accepts");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("an HTTP/1.1 connection");
    tokio::spawn(conn);
    let host = HeaderValue::from_str(&addr.to_string()).expect("an address is a host");
    for (probe, _) in probes {
        let label = probe.label;
        let call = call(probe);
        // An HTTP/1.1 connection takes the next request once the last one is done.
        sender
            .ready()
            .await
            .unwrap_or_else(|e| panic!("{target:?} {label}: {e}"));
        let response = sender
            .send_request(call.request(&host))
            .await
            .unwrap_or_else(|e| panic!("{target:?} {label}: {e}"));
        let (status, body) = read(response).await.expect("a whole answer");
        assert!(
            call.answered(target, status, &body),
            "{target:?} {label}: answered {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
}

/// The HTTP ceiling: reads each request whole and answers 200 with no body, deciding nothing,
/// on the same hyper HTTP/1.1 server settings as Portcullis' HTTP listener.
pub(crate) async fn serve_empty(listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(|request: Request<hyper::body::Incoming>| async move {
                    let _ = request.into_body().collect().await;
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}
