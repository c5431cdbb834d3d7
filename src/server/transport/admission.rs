//! The front of each listener: hyper calls [`Admission`] the moment a request's head has
//! arrived, before the request gets a task of its own, so the concurrency limit counts every
//! request accepted and not yet answered, and a request past it is refused at once instead
//! of waiting in the runtime's queue.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, Request, Response, header};
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt as _;

use super::{Refusal, Transport, TransportConfig};
use crate::server::metrics::Metrics;

/// The concurrency slots shared by both listeners, and the deadline of each request.
#[derive(Debug)]
pub(crate) struct Gate {
    permits: Arc<Semaphore>,
    limit: usize,
    timeout: Duration,
}

impl Gate {
    pub(crate) fn new(limit: usize, timeout: Duration) -> Self {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            timeout,
        }
    }

    /// A slot, held until dropped; refused when all are taken.
    fn enter(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        self.permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Overloaded { limit: self.limit })
    }
}

/// What differs between the listeners at their front.
pub(crate) trait Protocol: Send + Sync + 'static {
    type Body: Send + 'static;
    /// The `transport` label of metrics.
    const NAME: &'static str;
    /// Requests the limit and deadline leave alone: cheap ones an orchestrator or operator
    /// needs most when the server is overloaded.
    fn exempt(path: &str) -> bool;
    /// Refuses a request by its head alone.
    fn check_head(request: &Request<Incoming>, config: &TransportConfig) -> Result<(), Refusal>;
    /// The deadline the client asked for, if any.
    fn client_deadline(headers: &HeaderMap) -> Option<Duration>;
    /// The answer to a refused request; `sideband`: to the Sideband API.
    fn refuse(refusal: &Refusal, sideband: bool) -> Response<Self::Body>;
}

/// The gRPC listener.
pub(crate) struct Grpc;

impl Protocol for Grpc {
    type Body = tonic::body::Body;
    const NAME: &'static str = "grpc";

    fn exempt(path: &str) -> bool {
        path.starts_with("/grpc.health.v1.Health/")
    }

    // HTTP/2's SETTINGS_MAX_HEADER_LIST_SIZE caps the headers; the message size cap the rest.
    fn check_head(_: &Request<Incoming>, _: &TransportConfig) -> Result<(), Refusal> {
        Ok(())
    }

    fn client_deadline(headers: &HeaderMap) -> Option<Duration> {
        parse_grpc_timeout(headers.get("grpc-timeout")?.to_str().ok()?)
    }

    fn refuse(refusal: &Refusal, _: bool) -> Response<Self::Body> {
        refusal.grpc_status().into_http()
    }
}

/// The HTTP listener.
pub(crate) struct Http;

impl Protocol for Http {
    type Body = axum::body::Body;
    const NAME: &'static str = "http";

    fn exempt(path: &str) -> bool {
        matches!(path, "/healthz" | "/readyz" | "/metrics")
    }

    fn check_head(request: &Request<Incoming>, config: &TransportConfig) -> Result<(), Refusal> {
        let headers = request.headers();
        if headers.len() > config.max_headers {
            return Err(Refusal::TooManyHeaders {
                count: headers.len(),
                limit: config.max_headers,
            });
        }
        let bytes: usize = headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        if bytes > config.max_header_bytes {
            return Err(Refusal::HeadersTooLarge {
                bytes,
                limit: config.max_header_bytes,
            });
        }
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let sideband = super::is_sideband(request.uri().path());
        let limit = body_limit(config, sideband);
        match declared {
            Some(bytes) if bytes > limit as u64 && sideband => {
                Err(Refusal::SidebandBodyTooLarge { bytes, limit })
            }
            Some(bytes) if bytes > limit as u64 => Err(Refusal::BodyTooLarge { bytes, limit }),
            _ => Ok(()),
        }
    }

    fn client_deadline(_: &HeaderMap) -> Option<Duration> {
        None
    }

    fn refuse(refusal: &Refusal, sideband: bool) -> Response<Self::Body> {
        refusal.http_response(sideband)
    }
}

/// The largest body a request to the HTTP listener may have.
pub(crate) fn body_limit(config: &TransportConfig, sideband: bool) -> usize {
    if sideband {
        config.max_sideband_body_bytes
    } else {
        config.max_body_bytes
    }
}

/// hyper's service for one connection: refuses by the head, takes a concurrency slot or
/// refuses at once, then runs the application within the deadline.
pub(crate) struct Admission<S, P> {
    app: S,
    transport: Arc<Transport>,
    metrics: Arc<Metrics>,
    /// The TCP peer, for handlers that ask (`Request::remote_addr`, axum's `ConnectInfo`).
    peer: Option<tonic::transport::server::TcpConnectInfo>,
    protocol: std::marker::PhantomData<fn() -> P>,
}

impl<S: Clone, P> Clone for Admission<S, P> {
    fn clone(&self) -> Self {
        Self {
            app: self.app.clone(),
            transport: self.transport.clone(),
            metrics: self.metrics.clone(),
            peer: self.peer.clone(),
            protocol: std::marker::PhantomData,
        }
    }
}

impl<S, P> Admission<S, P> {
    pub(crate) fn new(
        app: S,
        transport: Arc<Transport>,
        metrics: Arc<Metrics>,
        peer: Option<tonic::transport::server::TcpConnectInfo>,
    ) -> Self {
        Self {
            app,
            transport,
            metrics,
            peer,
            protocol: std::marker::PhantomData,
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

impl<S, P> hyper::service::Service<Request<Incoming>> for Admission<S, P>
where
    P: Protocol,
    S: tower::Service<Request<Incoming>, Response = Response<P::Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<P::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        if let Some(peer) = &self.peer {
            if let Some(addr) = peer.remote_addr() {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(addr));
            }
            request.extensions_mut().insert(peer.clone());
        }
        let sideband = super::is_sideband(request.uri().path());
        let refuse = |refusal: Refusal| -> Self::Future {
            self.metrics.count_refusal(P::NAME, refusal.reason());
            Box::pin(std::future::ready(Ok(P::refuse(&refusal, sideband))))
        };
        if let Err(refusal) = P::check_head(&request, &self.transport.config) {
            return refuse(refusal);
        }
        let app = self.app.clone();
        if P::exempt(request.uri().path()) {
            return Box::pin(app.oneshot(request));
        }
        let gate = &self.transport.gate;
        let permit = match gate.enter() {
            Ok(permit) => permit,
            Err(refusal) => return refuse(refusal),
        };
        let deadline = P::client_deadline(request.headers())
            .map_or(gate.timeout, |client| client.min(gate.timeout));
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let answer = tokio::time::timeout(deadline, app.oneshot(request)).await;
            drop(permit);
            match answer {
                Ok(response) => response,
                Err(_) => {
                    let refusal = Refusal::TimedOut { after: deadline };
                    metrics.count_refusal(P::NAME, refusal.reason());
                    Ok(P::refuse(&refusal, sideband))
                }
            }
        })
    }
}

/// A gRPC `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    let (digits, unit) = text.split_at_checked(text.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_by_unit() {
        assert_eq!(parse_grpc_timeout("200m"), Some(Duration::from_millis(200)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        for bad in ["", "m", "123456789m", "1x", "-1S", "1.5S", "é"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_gate_refuses_past_its_limit_and_frees_slots() {
        let gate = Gate::new(2, Duration::from_secs(1));
        let a = gate.enter().unwrap();
        let _b = gate.enter().unwrap();
        assert_eq!(gate.enter().unwrap_err(), Refusal::Overloaded { limit: 2 });
        drop(a);
        assert!(gate.enter().is_ok());
    }

    #[test]
    fn health_and_metrics_are_exempt_from_the_limit() {
        assert!(Grpc::exempt("/grpc.health.v1.Health/Check"));
        assert!(!Grpc::exempt("/envoy.service.auth.v3.Authorization/Check"));
        assert!(Http::exempt("/healthz") && Http::exempt("/readyz") && Http::exempt("/metrics"));
        assert!(!Http::exempt("/v1/authorize"));
    }
}
