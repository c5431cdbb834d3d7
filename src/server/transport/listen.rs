//! The accept loops: TCP, then TLS when configured, then HTTP/1.1 or HTTP/2 (hyper) with the
//! header and stream caps, every request passing through [`Admission`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected as _;
use tower::ServiceExt as _;

use super::admission::{Admission, Grpc, Http, Protocol};
use super::{Transport, TransportConfig};
use crate::server::metrics::Metrics;

/// A client that has not finished its TLS handshake by then is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 counts each header field as its name and value plus 32 bytes (RFC 9113 §6.5.2).
fn header_list_size(config: &TransportConfig) -> u32 {
    let size = config
        .max_header_bytes
        .saturating_add(config.max_headers.saturating_mul(32));
    u32::try_from(size).unwrap_or(u32::MAX)
}

/// Serves gRPC (HTTP/2 only) on `listener` until `shutdown` completes, then waits for open
/// connections to finish.
pub(crate) async fn serve_grpc(
    listener: TcpListener,
    routes: tonic::service::Routes,
    transport: Arc<Transport>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let app = routes
        .prepare()
        .map_request(|request: Request<Incoming>| request.map(tonic::body::Body::new));
    let mut builder = auto::Builder::new(TokioExecutor::new()).http2_only();
    builder
        .http2()
        .max_concurrent_streams(transport.config.max_concurrent_streams)
        .max_header_list_size(header_list_size(&transport.config));
    let tls = transport.tls.as_ref().map(|tls| tls.grpc.clone());
    serve::<_, Grpc>(listener, app, builder, tls, transport, metrics, shutdown).await
}

/// Serves HTTP/1.1 and HTTP/2 on `listener` until `shutdown` completes, then waits for open
/// connections to finish.
pub(crate) async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    transport: Arc<Transport>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let config = &transport.config;
    let limits = config.clone();
    let app = router.map_request(move |request: Request<Incoming>| {
        let limit = super::admission::body_limit(&limits, super::is_sideband(request.uri().path()));
        request.map(|body| axum::body::Body::new(http_body_util::Limited::new(body, limit)))
    });
    // The parser's own caps sit at twice the limits, so that a request a little past them
    // gets Portcullis' 431 with a JSON body, and one far past them the parser's bare 431.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_headers(config.max_headers.saturating_mul(2).max(1))
        .max_buf_size(config.max_header_bytes.saturating_mul(2).max(8192));
    builder
        .http2()
        .max_concurrent_streams(config.max_concurrent_streams)
        .max_header_list_size(header_list_size(config).saturating_mul(2));
    let tls = transport.tls.as_ref().map(|tls| tls.http.clone());
    serve::<_, Http>(listener, app, builder, tls, transport, metrics, shutdown).await
}

async fn serve<S, P>(
    listener: TcpListener,
    app: S,
    builder: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    transport: Arc<Transport>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()>
where
    P: Protocol,
    P::Body: hyper::body::Body<Data = hyper::body::Bytes> + Send + 'static,
    <P::Body as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S: tower::Service<
            Request<Incoming>,
            Response = axum::http::Response<P::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for connections to close.
                    tracing::error!(error = %e, transport = P::NAME, "cannot accept connections; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let service = Admission::<S, P>::new(
            app.clone(),
            transport.clone(),
            metrics.clone(),
            Some(tcp.connect_info()),
        );
        let builder = builder.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let served = match tls {
                None => {
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(tcp), service))
                        .await
                }
                Some(tls) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            watcher
                                .watch(builder.serve_connection(TokioIo::new(stream), service))
                                .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, transport = P::NAME, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(transport = P::NAME, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, transport = P::NAME, "connection ended with an error");
            }
        });
    }
    // Stop accepting before draining, so that new clients are refused rather than left waiting.
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
