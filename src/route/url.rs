//! Request URLs: parsing, origin normalisation and path normalisation (SPEC §2a).
//!
//! The path is percent-decoded *before* it is split into segments, so `%2F` is a separator
//! and `%2e%2e` is a dot segment, exactly as an upstream that decodes would see them. Dot
//! segments and empty segments are then removed. A few encodings that upstreams disagree on
//! are refused with 400 instead of guessed at: backslashes, double-encoded separators,
//! `..;` path parameters, control characters and malformed escapes.

use std::borrow::Cow;
use std::fmt;

/// Longest URL accepted; longer ones are refused before any parsing work.
pub const MAX_URL_LEN: usize = 16 * 1024;

/// Why a URL was refused with 400 INVALID_REQUEST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlError {
    TooLong(usize),
    Unparseable,
    UnsupportedScheme(String),
    MissingHost,
    UserInfo,
    BadPercentEncoding,
    ControlCharacter,
    Backslash,
    DoubleEncoded,
    PathParameterDotSegment,
    NotUtf8,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlError::TooLong(len) => write!(
                f,
                "the URL is {len} bytes long; at most {MAX_URL_LEN} bytes are accepted"
            ),
            UrlError::Unparseable => f.write_str("the URL is not a valid absolute URL"),
            UrlError::UnsupportedScheme(s) => {
                write!(f, "the URL scheme `{s}` is not supported; use https or http")
            }
            UrlError::MissingHost => f.write_str("the URL has no host"),
            UrlError::UserInfo => f.write_str("the URL carries user information before the host"),
            UrlError::BadPercentEncoding => {
                f.write_str("the URL path has a malformed percent-encoding")
            }
            UrlError::ControlCharacter => {
                f.write_str("the URL path decodes to a control character")
            }
            UrlError::Backslash => f.write_str(
                "the URL path contains a backslash, which some servers treat as a separator",
            ),
            UrlError::DoubleEncoded => f.write_str(
                "the URL path contains a double-encoded separator or dot (`%25` followed by `2e`, `2f` or `5c`)",
            ),
            UrlError::PathParameterDotSegment => f.write_str(
                "the URL path contains a dot segment with a `;` parameter, which some servers treat as `..`",
            ),
            UrlError::NotUtf8 => f.write_str("the URL path does not decode to UTF-8"),
        }
    }
}

impl UrlError {
    /// The detail code of the 400 error body.
    pub fn code(&self) -> &'static str {
        match self {
            UrlError::TooLong(_) => "URL_TOO_LONG",
            UrlError::Unparseable
            | UrlError::UnsupportedScheme(_)
            | UrlError::MissingHost
            | UrlError::UserInfo => "INVALID_URL",
            _ => "AMBIGUOUS_PATH",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A path after decoding and dot-segment removal, kept as one string with segment bounds so
/// that normalising allocates twice at most.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NormalizedPath {
    text: String,
    bounds: Vec<(u32, u32)>,
}

impl NormalizedPath {
    pub fn len(&self) -> usize {
        self.bounds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bounds.is_empty()
    }

    pub fn segment(&self, i: usize) -> &str {
        let (a, b) = self.bounds[i];
        &self.text[a as usize..b as usize]
    }

    pub fn segments(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.len()).map(|i| self.segment(i))
    }

    /// `/a/b` form (`/` when empty); percent-decoded, so for display only.
    pub fn to_path_string(&self) -> String {
        self.path_string_from(0)
    }

    /// The `/a/b` form of the segments from `skip` on (`/` when none is left).
    pub fn path_string_from(&self, skip: usize) -> String {
        let mut out = String::with_capacity(self.text.len() + self.len() + 1);
        self.push_path(&mut out, skip);
        out
    }

    /// Appends the `/a/b` form of the segments from `skip` on (`/` when none is left).
    pub fn push_path(&self, out: &mut String, skip: usize) {
        let start = out.len();
        for s in self.segments().skip(skip) {
            out.push('/');
            out.push_str(s);
        }
        if out.len() == start {
            out.push('/');
        }
    }

    /// Bytes of the decoded segments, separators not counted.
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    fn push(&mut self, segment: &str) {
        let start = self.text.len() as u32;
        self.text.push_str(segment);
        self.bounds.push((start, self.text.len() as u32));
    }

    fn pop(&mut self) {
        if let Some((start, _)) = self.bounds.pop() {
            self.text.truncate(start as usize);
        }
    }

    /// One checked segment: empty and `.` stay, `..` goes up one, any other is added.
    fn step(&mut self, segment: &str) {
        match segment {
            "" | "." => {}
            ".." => self.pop(),
            s => self.push(s),
        }
    }
}

/// A request URL split into its origin and normalised path.
#[derive(Debug, Clone)]
pub struct RequestUrl<'a> {
    pub scheme: Scheme,
    /// Lower-case host without a trailing dot; IPv6 literals keep their brackets.
    pub host: Cow<'a, str>,
    pub port: u16,
    pub path: NormalizedPath,
}

/// Parses and normalises an absolute request URL.
///
/// Fails with the reason the URL must be refused (400) rather than matched.
pub fn parse_request_url(url: &str) -> Result<RequestUrl<'_>, UrlError> {
    if url.len() > MAX_URL_LEN {
        return Err(UrlError::TooLong(url.len()));
    }
    let (scheme_text, rest) = url.split_once("://").ok_or(UrlError::Unparseable)?;
    let scheme = if scheme_text.eq_ignore_ascii_case("https") {
        Scheme::Https
    } else if scheme_text.eq_ignore_ascii_case("http") {
        Scheme::Http
    } else if scheme_text.is_empty()
        || !scheme_text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return Err(UrlError::Unparseable);
    } else {
        return Err(UrlError::UnsupportedScheme(
            scheme_text.to_ascii_lowercase(),
        ));
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path_and_more) = rest.split_at(authority_end);
    let (host, port) = parse_authority(authority, scheme)?;
    let path_end =
        memchr::memchr2(b'?', b'#', path_and_more.as_bytes()).unwrap_or(path_and_more.len());
    let path = normalize_path(&path_and_more[..path_end])?;
    Ok(RequestUrl {
        scheme,
        host,
        port,
        path,
    })
}

/// Splits `host[:port]` and normalises both; shared with base-URL compilation so that a
/// policy and a request spell the same origin the same way.
pub fn parse_authority(authority: &str, scheme: Scheme) -> Result<(Cow<'_, str>, u16), UrlError> {
    if authority.contains('@') {
        return Err(UrlError::UserInfo);
    }
    let (host, port_text) = if let Some(rest) = authority.strip_prefix('[') {
        let close = rest.find(']').ok_or(UrlError::Unparseable)?;
        let literal = &rest[..close];
        if literal.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(UrlError::Unparseable);
        }
        let after = &rest[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(UrlError::Unparseable),
        };
        (&authority[..close + 2], port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port_text {
        None | Some("") => scheme.default_port(),
        Some(p) => {
            if p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(UrlError::Unparseable);
            }
            p.parse::<u16>().map_err(|_| UrlError::Unparseable)?
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err(UrlError::MissingHost);
    }
    if !host.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    {
        return Err(UrlError::Unparseable);
    }
    let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    };
    Ok((host, port))
}

/// Decodes and normalises a raw path (no query); see the module docs for what is refused.
pub fn normalize_path(raw: &str) -> Result<NormalizedPath, UrlError> {
    let mut out = NormalizedPath {
        text: String::with_capacity(raw.len()),
        bounds: Vec::with_capacity(8),
    };
    let mut decoded = Vec::new();
    for raw_segment in raw.split('/') {
        if raw_segment.is_empty() {
            continue;
        }
        // Most segments have no escape: checked in one pass over their bytes, as
        // `check_decoded_segment` would check them.
        if let Some(checked) = check_plain_segment(raw_segment) {
            checked?;
            out.step(raw_segment);
            continue;
        }
        // The segment has a `%`. An encoded `/` splits here, after decoding, as a decoding
        // upstream would split it.
        decoded.clear();
        percent_decode_into(raw_segment.as_bytes(), &mut decoded)?;
        let text = std::str::from_utf8(&decoded).map_err(|_| UrlError::NotUtf8)?;
        for segment in text.split('/') {
            check_decoded_segment(segment)?;
            out.step(segment);
        }
    }
    Ok(out)
}

/// What [`check_decoded_segment`] says of `segment`, found in one pass; `None` when the
/// segment has a `%` and must be decoded first.
fn check_plain_segment(segment: &str) -> Option<Result<(), UrlError>> {
    let mut first_error = None;
    let mut semicolon = false;
    for b in segment.bytes() {
        match b {
            b'%' => return None,
            0..0x20 | 0x7f => {
                first_error.get_or_insert(UrlError::ControlCharacter);
            }
            b'\\' => {
                first_error.get_or_insert(UrlError::Backslash);
            }
            b';' => semicolon = true,
            _ => {}
        }
    }
    if let Some(e) = first_error {
        return Some(Err(e));
    }
    if semicolon
        && let Some((before, _)) = segment.split_once(';')
        && (before == "." || before == "..")
    {
        return Some(Err(UrlError::PathParameterDotSegment));
    }
    Some(Ok(()))
}

fn check_decoded_segment(segment: &str) -> Result<(), UrlError> {
    for b in segment.bytes() {
        if b < 0x20 || b == 0x7f {
            return Err(UrlError::ControlCharacter);
        }
        if b == b'\\' {
            return Err(UrlError::Backslash);
        }
    }
    if let Some(i) = segment.find('%') {
        // What is still escaped after one decoding pass was double-encoded: harmless for
        // ordinary characters, but a second decoding upstream would turn these into `.`,
        // `/` or `\`.
        let rest = segment[i..].to_ascii_lowercase();
        if ["%2e", "%2f", "%5c"].iter().any(|e| rest.contains(e)) {
            return Err(UrlError::DoubleEncoded);
        }
    }
    if let Some((before, _)) = segment.split_once(';')
        && (before == "." || before == "..")
    {
        return Err(UrlError::PathParameterDotSegment);
    }
    Ok(())
}

fn percent_decode_into(input: &[u8], out: &mut Vec<u8>) -> Result<(), UrlError> {
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == b'%' {
            let hi = input.get(i + 1).and_then(|c| (*c as char).to_digit(16));
            let lo = input.get(i + 2).and_then(|c| (*c as char).to_digit(16));
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                _ => return Err(UrlError::BadPercentEncoding),
            }
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Ok(())
}

/// Query parameter names whose values are credentials and never shown in traces or logs.
const SECRET_QUERY_PARAMS: &[&str] = &[
    "access_token",
    "id_token",
    "refresh_token",
    "token",
    "code",
    "api_key",
    "apikey",
    "key",
    "client_secret",
    "password",
    "secret",
    "sig",
    "signature",
];

/// The URL as it may be shown in traces, logs and error bodies: values of credential-like
/// query parameters (`access_token`, `api_key`, …) replaced with `REDACTED`, fragment dropped.
pub fn redact_url(url: &str) -> Cow<'_, str> {
    let url = url.split_once('#').map_or(url, |(u, _)| u);
    let Some((base, query)) = url.split_once('?') else {
        return Cow::Borrowed(url);
    };
    let is_secret = |pair: &str| {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        SECRET_QUERY_PARAMS
            .iter()
            .any(|s| name.eq_ignore_ascii_case(s))
            && pair.contains('=')
    };
    if !query.split('&').any(is_secret) {
        return Cow::Borrowed(url);
    }
    Cow::Owned(redact_pairs(base, query, |name| {
        SECRET_QUERY_PARAMS
            .iter()
            .any(|s| name.eq_ignore_ascii_case(s))
    }))
}

/// `base?query` with the value of every `name=value` pair whose name `redact` picks
/// replaced with `REDACTED`.
pub(crate) fn redact_pairs(base: &str, query: &str, redact: impl Fn(&str) -> bool) -> String {
    let mut out = String::with_capacity(base.len() + 1 + query.len());
    out.push_str(base);
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, _)) if redact(name) => {
                out.push_str(name);
                out.push_str("=REDACTED");
            }
            _ => out.push_str(pair),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(raw: &str) -> Result<String, UrlError> {
        normalize_path(raw).map(|p| p.to_path_string())
    }

    proptest::proptest! {
        /// The one-pass check of a segment without `%` says what the full check says.
        #[test]
        fn a_plain_segment_is_checked_as_a_decoded_one(
            segment in "[a-z.;\\\\\\x00-\\x1f\\x7f%é]{1,12}"
        ) {
            match check_plain_segment(&segment) {
                None => proptest::prop_assert!(segment.contains('%')),
                Some(checked) => {
                    proptest::prop_assert!(!segment.contains('%'));
                    proptest::prop_assert_eq!(checked, check_decoded_segment(&segment));
                }
            }
        }
    }

    #[test]
    fn the_path_after_a_prefix_is_written_from_its_segments() {
        let p = normalize_path("/app/v1/items/7").unwrap();
        assert_eq!(p.path_string_from(2), "/items/7");
        assert_eq!(p.path_string_from(4), "/");
        assert_eq!(p.path_string_from(9), "/");
        let mut out = String::from("https://api.test");
        p.push_path(&mut out, 0);
        assert_eq!(out, "https://api.test/app/v1/items/7");
    }

    #[test]
    fn dot_and_empty_segments_are_removed() {
        assert_eq!(path("/a/./b//c/").unwrap(), "/a/b/c");
        assert_eq!(path("/a/b/../c").unwrap(), "/a/c");
        assert_eq!(path("/../../a").unwrap(), "/a");
        assert_eq!(path("").unwrap(), "/");
    }

    #[test]
    fn encoded_separators_and_dots_are_decoded_before_splitting() {
        assert_eq!(path("/a%2Fb").unwrap(), "/a/b");
        assert_eq!(path("/a/%2e%2e/b").unwrap(), "/b");
        assert_eq!(path("/a/%2E/b").unwrap(), "/a/b");
        assert_eq!(path("/a/b%2F..%2Fc").unwrap(), "/a/c");
        assert_eq!(path("/caf%C3%A9").unwrap(), "/café");
    }

    #[test]
    fn ambiguous_encodings_are_refused() {
        assert_eq!(path("/a%5cb"), Err(UrlError::Backslash));
        assert_eq!(path("/a\\b"), Err(UrlError::Backslash));
        assert_eq!(path("/a/%252e%252e/b"), Err(UrlError::DoubleEncoded));
        assert_eq!(path("/a/%zz"), Err(UrlError::BadPercentEncoding));
        assert_eq!(path("/a/%2"), Err(UrlError::BadPercentEncoding));
        assert_eq!(path("/a/%00"), Err(UrlError::ControlCharacter));
        assert_eq!(path("/a/..;/b"), Err(UrlError::PathParameterDotSegment));
        assert_eq!(path("/a/%ff"), Err(UrlError::NotUtf8));
        // An ordinary double-encoded character stays as it is.
        assert_eq!(path("/100%2525").unwrap(), "/100%25");
    }

    #[test]
    fn origins_are_normalised() {
        let u = parse_request_url("HTTPS://LocalHost.:443/x?y#z").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_ref(), u.port),
            (Scheme::Https, "localhost", 443)
        );
        let u = parse_request_url("http://[::1]/").unwrap();
        assert_eq!((u.host.as_ref(), u.port), ("[::1]", 80));
        assert_eq!(
            parse_request_url("https://u:p@host/").unwrap_err(),
            UrlError::UserInfo
        );
        assert_eq!(
            parse_request_url("ftp://host/").unwrap_err(),
            UrlError::UnsupportedScheme("ftp".into())
        );
        assert!(parse_request_url("https://host:99999/").is_err());
        assert!(parse_request_url("https://ho st/").is_err());
        assert!(parse_request_url("/relative").is_err());
    }

    #[test]
    fn credential_query_values_are_redacted() {
        assert_eq!(
            redact_url("https://h/p?a=1&access_token=abc&Api_Key=k#frag"),
            "https://h/p?a=1&access_token=REDACTED&Api_Key=REDACTED"
        );
        assert!(matches!(redact_url("https://h/p?a=1"), Cow::Borrowed(_)));
    }
}
