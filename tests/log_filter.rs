//! The server's log subscriber keeps the libraries' verbose call sites disabled where they
//! are called: h2 alone has trace-level spans and events per frame, and a subscriber that
//! lets their interest become "always" or "sometimes" puts a registry lookup on every one
//! (it once cost a third of the empty ceiling's CPU in the load bench).

use tracing::Level;
use tracing::level_filters::LevelFilter;

#[test]
fn the_log_at_info_disables_debug_and_trace_call_sites_and_never_shows_decision_spans() {
    let _guard = portcullis::server::log::install_json(
        std::io::sink(),
        tracing_subscriber::EnvFilter::new("info"),
    );
    assert_eq!(LevelFilter::current(), LevelFilter::INFO);
    assert!(!tracing::enabled!(target: "h2::codec", Level::TRACE));
    assert!(!tracing::span_enabled!(target: "h2::proto", Level::TRACE));
    assert!(!tracing::enabled!(target: "tonic::transport", Level::DEBUG));
    // The decisions' spans are for the OTLP layer only, which is not installed here.
    assert!(!tracing::span_enabled!(target: "portcullis::otel", Level::INFO));
    // What the log is for still reaches it.
    assert!(tracing::enabled!(target: "portcullis::audit", Level::INFO));
    assert!(tracing::enabled!(target: "portcullis::server", Level::WARN));
}
