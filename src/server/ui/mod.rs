//! The recent-decisions web page (issue 7): a static page, embedded in the binary, that lists
//! decisions and explains one through the decisions API. Every asset is served from here, so
//! the page works offline; decision data is only ever put into the page as text.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::OnceLock;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// Only the page's own scripts, styles and API calls; no inline code, no framing, and
/// Trusted Types so that the browser itself refuses an HTML string written into the page.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'; require-trusted-types-for 'script'; \
     trusted-types 'none'";

/// One embedded file of the page.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: OnceLock<HeaderValue>,
}

impl Asset {
    const fn new(body: &'static str, content_type: &'static str) -> Self {
        Self {
            body,
            content_type,
            etag: OnceLock::new(),
        }
    }

    fn etag(&self) -> &HeaderValue {
        self.etag.get_or_init(|| {
            let mut hasher = DefaultHasher::new();
            self.body.hash(&mut hasher);
            HeaderValue::from_str(&format!("\"{:016x}\"", hasher.finish()))
                .expect("a hex string is a valid header value")
        })
    }

    /// The asset, or 304 when the browser already has this version.
    fn respond(&self, request: &HeaderMap) -> Response {
        let etag = self.etag();
        let fresh = request
            .get(header::IF_NONE_MATCH)
            .is_some_and(|v| v.as_bytes() == etag.as_bytes());
        let mut response = if fresh {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(self.content_type),
                )],
                self.body,
            )
                .into_response()
        };
        let headers = response.headers_mut();
        headers.insert(header::ETAG, etag.clone());
        // Revalidate every time: a new binary may carry a new page.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        response
    }
}

static INDEX: Asset = Asset::new(include_str!("index.html"), "text/html; charset=utf-8");
static SCRIPT: Asset = Asset::new(include_str!("app.js"), "text/javascript; charset=utf-8");
static STYLE: Asset = Asset::new(include_str!("app.css"), "text/css; charset=utf-8");
static ICON: Asset = Asset::new(include_str!("favicon.svg"), "image/svg+xml");

/// The page's routes, for any router state: `/` and `/ui` lead to `/ui/`; the list lives
/// at `/ui/` and a decision at `/ui/decisions/{id}` (the same page, which reads its path).
pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(to_page))
        .route("/ui", get(to_page))
        .route("/ui/", get(page))
        .route("/ui/decisions/{id}", get(page))
        .route("/ui/app.js", get(script))
        .route("/ui/app.css", get(style))
        .route("/ui/favicon.svg", get(icon))
}

async fn to_page() -> Redirect {
    Redirect::temporary("/ui/")
}

async fn page(headers: HeaderMap) -> Response {
    INDEX.respond(&headers)
}

async fn script(headers: HeaderMap) -> Response {
    SCRIPT.respond(&headers)
}

async fn style(headers: HeaderMap) -> Response {
    STYLE.respond(&headers)
}

async fn icon(headers: HeaderMap) -> Response {
    ICON.respond(&headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_is_quoted_and_answers_304_when_it_matches() {
        let etag = INDEX.etag().clone();
        assert!(etag.to_str().unwrap().starts_with('"'));
        let mut request = HeaderMap::new();
        request.insert(header::IF_NONE_MATCH, etag.clone());
        let response = INDEX.respond(&request);
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(response.headers()[header::ETAG], etag);
        let response = INDEX.respond(&HeaderMap::new());
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[test]
    fn every_asset_carries_the_security_headers() {
        for asset in [&INDEX, &SCRIPT, &STYLE, &ICON] {
            let response = asset.respond(&HeaderMap::new());
            let headers = response.headers();
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(
                headers[header::CONTENT_SECURITY_POLICY],
                CONTENT_SECURITY_POLICY
            );
            assert_eq!(headers[header::CONTENT_TYPE], asset.content_type);
        }
    }
}
