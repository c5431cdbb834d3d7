//! The Sideband API of the PingOne Authorize gateway integration kits (SPEC §5a):
//! `POST /sideband/request` decides on the request a kit describes in JSON and answers with
//! the request to forward (allow) or the response to send (deny, in a `response` member);
//! `POST /sideband/response` hands back the upstream's response for the kit to send.
//!
//! Kits apply what they get back: a header missing from an allow's echo is removed upstream,
//! a changed `method`, `url` or `body` is applied. So every member the kit sent is echoed
//! byte for byte from its own JSON (never re-serialised), and only `headers` is rebuilt.
//! Every call needs one of the shared secrets, checked before the body is read.

use std::borrow::Cow;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::AppState;
use crate::decision::{Decision, DecisionRequest, InvalidInput, Outcome};

/// The secret header the kits use unless configured otherwise.
pub const DEFAULT_SECRET_HEADER: &str = "CLIENT-TOKEN";

/// How often the secret file is read again to pick up a rotation.
const SECRET_POLL: Duration = Duration::from_secs(1);

/// The `transport` label of sideband decisions in metrics and the audit log.
const TRANSPORT: &str = "sideband";

/// How the Sideband API is set up; the `serve` command fills it from flags.
#[derive(Debug, Clone)]
pub struct SidebandConfig {
    /// One secret a line; any of them is accepted.
    pub secret_file: PathBuf,
    /// The request header that carries the secret.
    pub secret_header: HeaderName,
}

/// Why a call was refused before its body was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretDenial {
    /// No secret header.
    Required,
    /// A secret that is none of the configured ones.
    Invalid,
}

impl SecretDenial {
    pub fn code(self) -> &'static str {
        match self {
            SecretDenial::Required => "SECRET_REQUIRED",
            SecretDenial::Invalid => "SECRET_INVALID",
        }
    }
}

/// The accepted secrets (as SHA-256 digests, never the secrets themselves), re-read from
/// their file when it changes.
pub struct SidebandSecrets {
    header: HeaderName,
    file: PathBuf,
    digests: ArcSwap<Vec<[u8; 32]>>,
    /// The file's content last read, to notice a change (a digest, like the secrets).
    read: std::sync::Mutex<[u8; 32]>,
}

impl std::fmt::Debug for SidebandSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidebandSecrets")
            .field("header", &self.header)
            .field("file", &self.file)
            .field("secrets", &self.digests.load().len())
            .finish()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref());
    out
}

/// The digests of the secrets in `text`: one a line, surrounding white space trimmed, blank
/// lines skipped. Fails when there is none.
fn parse_secrets(text: &[u8]) -> Result<Vec<[u8; 32]>, String> {
    let digests: Vec<[u8; 32]> = text
        .split(|b| *b == b'\n')
        .map(<[u8]>::trim_ascii)
        .filter(|line| !line.is_empty())
        .map(sha256)
        .collect();
    if digests.is_empty() {
        return Err("it holds no secret (one secret a line)".into());
    }
    Ok(digests)
}

impl SidebandSecrets {
    /// Fails when the file cannot be read or holds no secret.
    pub fn load(config: &SidebandConfig) -> Result<Self, String> {
        let file = &config.secret_file;
        let text = std::fs::read(file).map_err(|e| {
            format!(
                "cannot read the sideband secret file {}: {e}",
                file.display()
            )
        })?;
        let digests = parse_secrets(&text)
            .map_err(|e| format!("the sideband secret file {}: {e}", file.display()))?;
        Ok(Self {
            header: config.secret_header.clone(),
            file: file.clone(),
            digests: ArcSwap::from_pointee(digests),
            read: std::sync::Mutex::new(sha256(&text)),
        })
    }

    /// Checks the secret header of a call. Every configured secret is compared, in constant
    /// time, whichever matches: the time taken says nothing about the secrets.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), SecretDenial> {
        let presented = headers
            .get(&self.header)
            .map(|v| v.as_bytes().trim_ascii())
            .filter(|v| !v.is_empty())
            .ok_or(SecretDenial::Required)?;
        let presented = sha256(presented);
        let mut matched = false;
        for digest in self.digests.load().iter() {
            matched |=
                aws_lc_rs::constant_time::verify_slices_are_equal(&presented, digest).is_ok();
        }
        if matched {
            Ok(())
        } else {
            Err(SecretDenial::Invalid)
        }
    }

    /// Reads the file again; a changed, usable one replaces the secrets. A file that cannot
    /// be read, or holds no secret, keeps the last good secrets (and is logged).
    fn reread(&self) {
        let path: &Path = &self.file;
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(file = %path.display(), "cannot read the sideband secret file ({e}); the last secrets read stay in force");
                return;
            }
        };
        let digest = sha256(&text);
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        if *read == digest {
            return;
        }
        *read = digest;
        match parse_secrets(&text) {
            Ok(digests) => {
                let count = digests.len();
                self.digests.store(Arc::new(digests));
                tracing::info!(file = %path.display(), secrets = count, "sideband secrets reloaded");
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), "sideband secret file not used: {e}; the last secrets read stay in force");
            }
        }
    }

    /// Re-reads the secret file every second, for as long as the server runs.
    pub(crate) async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SECRET_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let secrets = self.clone();
            // File I/O off the request threads.
            let _ = tokio::task::spawn_blocking(move || secrets.reread()).await;
        }
    }
}

/// A JSON string, borrowed from the request body where it has no escapes.
#[derive(serde::Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// The members of a JSON object in the order sent, their values unparsed; a name sent twice
/// is refused (kits and upstreams could each read a different one).
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members: Vec<(Cow<'de, str>, &'de RawValue)> = Vec::with_capacity(8);
                while let Some((Text(name), value)) = map.next_entry::<Text<'de>, &RawValue>()? {
                    if members.iter().any(|(n, _)| *n == name) {
                        return Err(serde::de::Error::custom(format_args!(
                            "the member `{name}` is sent twice"
                        )));
                    }
                    members.push((name, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(V)
    }
}

impl<'a> Members<'a> {
    fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
}

/// One entry of a `headers` array: `{"name": "value"}`, kept with its JSON for the echo.
struct HeaderEntry<'a> {
    name: Cow<'a, str>,
    value: Cow<'a, str>,
    json: &'a RawValue,
}

/// An object of exactly one member whose value is a string.
struct OneHeader<'a>(Cow<'a, str>, Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for OneHeader<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneHeader<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of one header name and its value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OneHeader<'de>, A::Error> {
                let Some((Text(name), Text(value))) = map.next_entry::<Text<'de>, Text<'de>>()?
                else {
                    return Err(serde::de::Error::custom("the object is empty"));
                };
                if map.next_key::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(serde::de::Error::custom(
                        "the object has more than one member; send a repeated header as another object",
                    ));
                }
                Ok(OneHeader(name, value))
            }
        }
        deserializer.deserialize_map(V)
    }
}

/// What was wrong with a call's JSON: the field and why, for a 400.
fn invalid(code: &'static str, target: impl Into<String>, message: String) -> InvalidInput {
    InvalidInput {
        code,
        target: target.into(),
        message,
    }
}

fn required(name: &str) -> InvalidInput {
    invalid(
        "REQUIRED_VALUE",
        name,
        format!("The member `{name}` is required; the gateway integration kit must send it."),
    )
}

/// A member that must be a string.
fn text_member<'a>(
    members: &Members<'a>,
    name: &str,
) -> Result<Option<Cow<'a, str>>, InvalidInput> {
    let Some(raw) = members.get(name) else {
        return Ok(None);
    };
    match serde_json::from_str::<Text<'a>>(raw.get()) {
        Ok(Text(text)) => Ok(Some(text)),
        Err(_) => Err(invalid(
            "INVALID_VALUE",
            name,
            format!("`{name}` must be a string, not `{}`.", shown_json(raw)),
        )),
    }
}

/// A member that must be one of the JSON kinds named; absent and `null` pass.
fn check_kind(members: &Members<'_>, name: &str, kinds: &[&str]) -> Result<(), InvalidInput> {
    let Some(raw) = members.get(name) else {
        return Ok(());
    };
    let kind = match raw.get().as_bytes().first() {
        Some(b'"') => "string",
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b'n') => return Ok(()),
        Some(b't' | b'f') => "boolean",
        _ => "number",
    };
    if kinds.contains(&kind) {
        return Ok(());
    }
    Err(invalid(
        "INVALID_VALUE",
        name,
        format!(
            "`{name}` must be {}, not {kind} `{}`.",
            kinds.join(" or "),
            shown_json(raw)
        ),
    ))
}

/// A JSON value, short enough for an error message.
fn shown_json(raw: &RawValue) -> String {
    let text = raw.get();
    match text.char_indices().nth(40) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The `headers` array: one object of one string member per header, in order.
fn headers_member<'a>(members: &Members<'a>) -> Result<Vec<HeaderEntry<'a>>, InvalidInput> {
    let raw = members.get("headers").ok_or_else(|| required("headers"))?;
    let items: Vec<&RawValue> = serde_json::from_str(raw.get()).map_err(|_| {
        invalid(
            "INVALID_VALUE",
            "headers",
            format!(
                "`headers` must be an array of objects such as {{\"accept\": \"*/*\"}}, not `{}`.",
                shown_json(raw)
            ),
        )
    })?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, json)| match serde_json::from_str::<OneHeader<'a>>(json.get()) {
            Ok(OneHeader(name, value)) if !name.is_empty() => Ok(HeaderEntry { name, value, json }),
            Ok(_) => Err(invalid(
                "INVALID_VALUE",
                format!("headers[{i}]"),
                "A header name is empty.".into(),
            )),
            Err(e) => Err(invalid(
                "INVALID_VALUE",
                format!("headers[{i}]"),
                format!(
                    "Each entry of `headers` must be an object of one header name and its string value, such as {{\"accept\": \"*/*\"}}; `{}`: {}.",
                    shown_json(json),
                    strip_position(&e.to_string())
                ),
            )),
        })
        .collect()
}

/// serde_json's message without its " at line 1 column 9" (the position in a fragment).
fn strip_position(message: &str) -> &str {
    message.split(" at line ").next().unwrap_or(message)
}

/// `source_ip`: the client's address, which client-address rules read.
fn source_ip(members: &Members<'_>) -> Result<Option<IpAddr>, InvalidInput> {
    match text_member(members, "source_ip")? {
        None => Ok(None),
        Some(text) if text.trim().is_empty() => Ok(None),
        Some(text) => super::parse_client(&text).map(Some).ok_or_else(|| {
            invalid(
                "INVALID_VALUE",
                "source_ip",
                format!("`source_ip` must be an IP address, not `{text}`."),
            )
        }),
    }
}

/// `source_port`: a number, or a string of digits (nginx gives it so); only checked.
fn check_source_port(members: &Members<'_>) -> Result<(), InvalidInput> {
    let Some(raw) = members.get("source_port") else {
        return Ok(());
    };
    let text = raw.get();
    let digits = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    if text == "null" || (digits.len() <= 5 && digits.parse::<u16>().is_ok()) {
        return Ok(());
    }
    Err(invalid(
        "INVALID_VALUE",
        "source_port",
        format!(
            "`source_port` must be a port number (a number or a string of digits), not `{}`.",
            shown_json(raw)
        ),
    ))
}

/// The members of a call's body, or why they cannot be read.
fn members_of(body: &[u8]) -> Result<Members<'_>, InvalidInput> {
    let text = std::str::from_utf8(body).map_err(|_| {
        invalid(
            "MALFORMED_JSON",
            "body",
            "The request body is not UTF-8; send the JSON the gateway integration kit builds."
                .into(),
        )
    })?;
    serde_json::from_str::<Members<'_>>(text).map_err(|e| {
        invalid(
            "MALFORMED_JSON",
            "body",
            format!("The request body is not a JSON object: {e}."),
        )
    })
}

/// What the access phase reads of a call.
struct AccessRequest<'a> {
    members: Members<'a>,
    method: Cow<'a, str>,
    url: Cow<'a, str>,
    headers: Vec<HeaderEntry<'a>>,
    client: Option<IpAddr>,
}

/// A call that cannot be used: why, and what could be read of its method and URL (for the
/// record of the refusal).
type Unreadable = (InvalidInput, String, String);

/// The method and URL of a call that cannot be used, as far as they can be read.
fn unreadable(members: &Members<'_>, input: InvalidInput) -> Unreadable {
    let seen = |name: &str| {
        text_member(members, name)
            .ok()
            .flatten()
            .map(Cow::into_owned)
            .unwrap_or_default()
    };
    (input, seen("method"), seen("url"))
}

fn read_access(body: &[u8]) -> Result<AccessRequest<'_>, Unreadable> {
    let members = members_of(body).map_err(|e| (e, String::new(), String::new()))?;
    match access_fields(&members) {
        Ok((method, url, headers, client)) => Ok(AccessRequest {
            members,
            method,
            url,
            headers,
            client,
        }),
        Err(e) => Err(unreadable(&members, e)),
    }
}

type AccessFields<'a> = (
    Cow<'a, str>,
    Cow<'a, str>,
    Vec<HeaderEntry<'a>>,
    Option<IpAddr>,
);

fn access_fields<'a>(members: &Members<'a>) -> Result<AccessFields<'a>, InvalidInput> {
    let method = text_member(members, "method")?.ok_or_else(|| required("method"))?;
    let url = text_member(members, "url")?.ok_or_else(|| required("url"))?;
    let headers = headers_member(members)?;
    let client = source_ip(members)?;
    check_source_port(members)?;
    check_kind(members, "http_version", &["string", "number"])?;
    check_kind(members, "body", &["string"])?;
    check_kind(members, "client_certificate", &["object"])?;
    Ok((method, url, headers, client))
}

/// Appends `text` as a JSON string.
fn push_json_string(out: &mut Vec<u8>, text: &str) {
    // Writing a `str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

fn push_header(out: &mut Vec<u8>, first: &mut bool, name: &str, value: &str) {
    if !std::mem::take(first) {
        out.push(b',');
    }
    out.push(b'{');
    push_json_string(out, name);
    out.push(b':');
    push_json_string(out, value);
    out.push(b'}');
}

/// The reason phrase the kits use for a status, upper-cased.
fn status_text(status: u16) -> Cow<'static, str> {
    match status {
        200 => "OK".into(),
        400 => "BAD REQUEST".into(),
        401 => "UNAUTHORIZED".into(),
        404 => "NOT FOUND".into(),
        413 => "PAYLOAD TOO LARGE".into(),
        429 => "TOO MANY REQUESTS".into(),
        500 => "INTERNAL SERVER ERROR".into(),
        503 => "SERVICE UNAVAILABLE".into(),
        other => StatusCode::from_u16(other)
            .ok()
            .and_then(|s| s.canonical_reason())
            .map_or(Cow::Borrowed(""), |r| Cow::Owned(r.to_ascii_uppercase())),
    }
}

/// Writes the members of a call as sent, but those named in `skip`, and for `headers` the
/// entries of `kept` as sent followed by `added`; leaves the object open for more members.
fn echo_members<'h>(
    out: &mut Vec<u8>,
    members: &Members<'_>,
    skip: &[&str],
    kept: impl Iterator<Item = &'h HeaderEntry<'h>>,
    added: impl Iterator<Item = (&'h str, &'h str)>,
) {
    out.push(b'{');
    let mut headers = Some((kept, added));
    let mut first_member = true;
    for (name, raw) in &members.0 {
        if skip.contains(&&**name) {
            continue;
        }
        if !std::mem::take(&mut first_member) {
            out.push(b',');
        }
        push_json_string(out, name);
        out.push(b':');
        let rebuilt = if name == "headers" {
            headers.take()
        } else {
            None
        };
        match rebuilt {
            Some((kept, added)) => {
                out.push(b'[');
                let mut first = true;
                for entry in kept {
                    if !std::mem::take(&mut first) {
                        out.push(b',');
                    }
                    out.extend_from_slice(entry.json.get().as_bytes());
                }
                for (name, value) in added {
                    push_header(out, &mut first, name, value);
                }
                out.push(b']');
            }
            None => out.extend_from_slice(raw.get().as_bytes()),
        }
    }
}

/// The allow: every member the kit sent, as it sent it, except `headers` — the client's
/// headers in order without those the decision sets (a client must not spoof them), then
/// the decision's upstream headers and `x-decision-id` — and `state`, which leads the
/// response phase back to the decision.
fn allow_body(request: &AccessRequest<'_>, decision: &Decision) -> Vec<u8> {
    let set_here = |name: &str| {
        name.eq_ignore_ascii_case("x-decision-id")
            || decision
                .upstream_headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    let mut out = Vec::with_capacity(512);
    echo_members(
        &mut out,
        &request.members,
        &["state"],
        request.headers.iter().filter(|e| !set_here(&e.name)),
        decision
            .upstream_headers
            .iter()
            .chain([("x-decision-id", decision.id.as_str())]),
    );
    // `headers` is always there, so a member came before.
    out.extend_from_slice(b",\"state\":{\"decisionId\":");
    push_json_string(&mut out, &decision.id);
    out.extend_from_slice(b"}}");
    out
}

/// The deny: the response for the kit to send, with the status, headers and body the client
/// gets through Envoy.
fn deny_body(request: &AccessRequest<'_>, decision: &Decision) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(b"{\"response\":{\"response_code\":\"");
    out.extend_from_slice(decision.status.to_string().as_bytes());
    out.extend_from_slice(b"\",\"response_status\":");
    push_json_string(&mut out, &status_text(decision.status));
    out.extend_from_slice(b",\"http_version\":");
    match request.members.get("http_version") {
        Some(raw) if raw.get() != "null" => out.extend_from_slice(raw.get().as_bytes()),
        _ => out.extend_from_slice(b"\"1.1\""),
    }
    out.extend_from_slice(b",\"headers\":[");
    let mut first = true;
    for (name, value) in decision.headers.iter() {
        push_header(&mut out, &mut first, name, value);
    }
    out.extend_from_slice(b"],\"body\":");
    let body = decision
        .body
        .as_ref()
        .and_then(|b| serde_json::to_string(b).ok())
        .unwrap_or_default();
    push_json_string(&mut out, &body);
    out.extend_from_slice(b"}}");
    out
}

fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A call Portcullis cannot use, answered with the decision's status and SPEC §3 body
/// (the kit turns it into a 502 for the client and logs the body's `message` and `id`).
fn refusal_response(decision: &Decision) -> Response {
    let status = StatusCode::from_u16(decision.status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = decision
        .body
        .as_ref()
        .and_then(|b| serde_json::to_string(b).ok())
        .unwrap_or_default();
    let mut response = json_response(status, body);
    if let Ok(id) = HeaderValue::from_str(&decision.id) {
        response.headers_mut().insert("x-decision-id", id);
    }
    response
}

/// An error with the SPEC §3 body and no decision id: no decision was made.
fn api_error(
    status: StatusCode,
    code: &str,
    detail: &str,
    target: &str,
    message: &str,
) -> Response {
    let body = serde_json::json!({
        "code": code,
        "message": message,
        "target": target,
        "details": [{ "code": detail, "target": target, "message": message }],
    });
    json_response(status, body.to_string())
}

/// The answer to a call that cannot go on, if it cannot: 404 when the Sideband API is off,
/// 401 when the secret is missing or wrong (counted, never recorded).
fn unadmitted(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let Some(secrets) = &state.sideband else {
        return Some(api_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "SIDEBAND_DISABLED",
            "url",
            "The Sideband API is off: start `portcullis serve` with `--sideband-secret-file FILE` to serve it.",
        ));
    };
    let denial = secrets.check(headers).err()?;
    state.metrics.count_refusal("http", denial.code());
    let name = secrets.header.as_str();
    let message = match denial {
        SecretDenial::Required => format!(
            "The call carries no shared secret: the gateway integration kit must send one of the secrets of `--sideband-secret-file` in the `{name}` header (its `secret_header_name`)."
        ),
        SecretDenial::Invalid => format!(
            "The shared secret in the `{name}` header is not one of those in `--sideband-secret-file`; check the kit's `shared_secret`."
        ),
    };
    Some(api_error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        denial.code(),
        name,
        &message,
    ))
}

/// Reads the body within the `--sideband-max-body` limit the listener applies.
async fn read_body(state: &AppState, body: Body) -> Result<axum::body::Bytes, Response> {
    match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => Ok(bytes),
        Err(e) => {
            // The listener's limit error, under the layers of body wrappers.
            let too_large =
                std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                    e.source()
                })
                .any(|e| e.is::<http_body_util::LengthLimitError>());
            if too_large {
                state.metrics.count_refusal("http", "BODY_TOO_LARGE");
                Err(super::transport::sideband_body_too_large(
                    state.sideband_max_body,
                ))
            } else {
                Err(api_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_REQUEST",
                    "MALFORMED_BODY",
                    "body",
                    "The request body could not be read to its end.",
                ))
            }
        }
    }
}

/// The body of a call that may go on, or the answer to one that may not.
async fn admitted_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, Response> {
    if let Some(answer) = unadmitted(state, headers) {
        return Err(answer);
    }
    read_body(state, body).await
}

/// The 400 of a call that cannot be used, recorded as a decision.
fn refuse(state: &AppState, (input, method, url): Unreadable) -> Response {
    let decision = state.refuse_input(
        &DecisionRequest {
            method: &method,
            url: &url,
            headers: &[],
            client: None,
        },
        input,
        TRANSPORT,
    );
    refusal_response(&decision)
}

/// `POST /sideband/request`: the access phase.
pub(super) async fn request(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match admitted_body(&state, &headers, body).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    let request = match read_access(&body) {
        Ok(request) => request,
        Err(unreadable) => return refuse(&state, unreadable),
    };
    let pairs: Vec<(&str, &str)> = request
        .headers
        .iter()
        .map(|h| (&*h.name, &*h.value))
        .collect();
    let decision = state
        .decide(
            &DecisionRequest {
                method: &request.method,
                url: &request.url,
                headers: &pairs,
                client: request.client,
            },
            TRANSPORT,
        )
        .await;
    // A URL that is no absolute http(s) URL is the kit's mistake, not the client's.
    if decision.detail_code() == Some("INVALID_URL") {
        return refusal_response(&decision);
    }
    let answer = match decision.outcome {
        Outcome::Allow => allow_body(&request, &decision),
        Outcome::Deny => deny_body(&request, &decision),
    };
    json_response(StatusCode::OK, answer)
}

/// `POST /sideband/response`: the upstream's response, echoed for the kit to send, with the
/// decision's id added; the decision's record gains the upstream's status.
pub(super) async fn response(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match admitted_body(&state, &headers, body).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    match read_response(&body) {
        Ok(read) => {
            if let Some(id) = &read.decision_id {
                state.set_upstream_status(id, read.status);
            }
            json_response(StatusCode::OK, response_body(&read))
        }
        Err(unreadable) => refuse(&state, unreadable),
    }
}

/// What the response phase reads of a call.
struct ResponsePhase<'a> {
    members: Members<'a>,
    headers: Vec<HeaderEntry<'a>>,
    /// `response_code`.
    status: u16,
    /// From `state`, when the access phase gave one.
    decision_id: Option<String>,
}

fn read_response(body: &[u8]) -> Result<ResponsePhase<'_>, Unreadable> {
    let members = members_of(body).map_err(|e| (e, String::new(), String::new()))?;
    match response_fields(&members) {
        Ok((headers, status)) => Ok(ResponsePhase {
            decision_id: members
                .get("state")
                .and_then(|raw| serde_json::from_str::<AccessState>(raw.get()).ok())
                .map(|s| s.decision_id),
            members,
            headers,
            status,
        }),
        Err(e) => Err(unreadable(&members, e)),
    }
}

fn response_fields<'a>(members: &Members<'a>) -> Result<(Vec<HeaderEntry<'a>>, u16), InvalidInput> {
    let code = members
        .get("response_code")
        .ok_or_else(|| required("response_code"))?;
    let text = code.get();
    let digits = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    let status = digits
        .parse::<u16>()
        .ok()
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| {
            invalid(
                "INVALID_VALUE",
                "response_code",
                format!(
                    "`response_code` must be an HTTP status (a number or a string of digits), not `{}`.",
                    shown_json(code)
                ),
            )
        })?;
    let headers = headers_member(members)?;
    check_kind(members, "body", &["string"])?;
    Ok((headers, status))
}

/// The `state` the access phase hands out.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccessState {
    decision_id: String,
}

/// The response for the kit to send: every member as sent, except `state` and `request`,
/// which were for Portcullis; the upstream's headers gain `x-decision-id` (replacing one
/// the upstream set), as Envoy's clients get it.
fn response_body(read: &ResponsePhase<'_>) -> Vec<u8> {
    let id = read.decision_id.as_deref();
    let mut out = Vec::with_capacity(
        256 + read
            .members
            .0
            .iter()
            .map(|(_, v)| v.get().len())
            .sum::<usize>(),
    );
    echo_members(
        &mut out,
        &read.members,
        &["state", "request"],
        read.headers
            .iter()
            .filter(|e| id.is_none() || !e.name.eq_ignore_ascii_case("x-decision-id")),
        id.map(|id| ("x-decision-id", id)).into_iter(),
    );
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_one_a_line_and_blank_lines_do_not_count() {
        assert_eq!(parse_secrets(b"a\n\n  b \r\n").unwrap().len(), 2);
        assert!(parse_secrets(b" \n\n").is_err());
    }

    #[test]
    fn any_configured_secret_is_accepted_in_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secrets");
        std::fs::write(&file, "old-secret\nnew-secret\n").unwrap();
        let secrets = SidebandSecrets::load(&SidebandConfig {
            secret_file: file,
            secret_header: HeaderName::from_static("client-token"),
        })
        .unwrap();
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("CLIENT-TOKEN", HeaderValue::from_str(value).unwrap());
            headers
        };
        assert_eq!(secrets.check(&with("old-secret")), Ok(()));
        assert_eq!(secrets.check(&with("new-secret")), Ok(()));
        assert_eq!(
            secrets.check(&with("new-secre")),
            Err(SecretDenial::Invalid)
        );
        assert_eq!(
            secrets.check(&HeaderMap::new()),
            Err(SecretDenial::Required)
        );
        assert!(!format!("{secrets:?}").contains("secret\""));
    }

    #[test]
    fn a_name_sent_twice_is_refused() {
        let Err(e) = members_of(br#"{"url":"https://a:443/","url":"https://b:443/"}"#) else {
            panic!("a duplicate member must be refused");
        };
        assert_eq!(e.code, "MALFORMED_JSON");
        assert!(e.message.contains("`url` is sent twice"), "{}", e.message);
    }

    #[test]
    fn header_entries_need_exactly_one_string_member() {
        for (bad, why) in [
            (r#"{"a":"1","b":"2"}"#, "more than one member"),
            (r#"{}"#, "empty"),
            (r#"{"a":1}"#, "string"),
            (r#""a: 1""#, "object"),
        ] {
            let body = format!(
                r#"{{"method":"GET","url":"https://h:443/","headers":[{{"ok":"x"}},{bad}]}}"#
            );
            let Err((e, method, _)) = read_access(body.as_bytes()) else {
                panic!("{bad} must be refused");
            };
            assert_eq!(
                (e.code, e.target.as_str()),
                ("INVALID_VALUE", "headers[1]"),
                "{bad}"
            );
            assert!(e.message.contains(why), "{bad}: {}", e.message);
            assert_eq!(method, "GET");
        }
    }

    #[test]
    fn escaped_strings_are_read_and_echoed_as_sent() {
        let body = br#"{"method":"G\u0045T","url":"https://h:443/p","headers":[{"x-a":"caf\u00e9 \"q\""}],"body":"\n"}"#;
        let request = read_access(body).unwrap_or_else(|_| panic!("readable"));
        assert_eq!(request.method, "GET");
        assert_eq!(request.headers[0].value, "café \"q\"");
        assert_eq!(
            request.headers[0].json.get(),
            r#"{"x-a":"caf\u00e9 \"q\""}"#
        );
    }

    #[test]
    fn statuses_have_the_kits_reason_phrases() {
        assert_eq!(status_text(401), "UNAUTHORIZED");
        assert_eq!(status_text(403), "FORBIDDEN");
        assert_eq!(status_text(405), "METHOD NOT ALLOWED");
        assert_eq!(status_text(429), "TOO MANY REQUESTS");
    }

    #[test]
    fn source_ports_are_numbers_or_strings_of_digits() {
        for ok in [r#""51234""#, "51234", "null"] {
            let body = format!(r#"{{"source_port":{ok}}}"#);
            assert!(
                check_source_port(&members_of(body.as_bytes()).unwrap()).is_ok(),
                "{ok}"
            );
        }
        for bad in [r#""http""#, "70000", "-1", "[1]", r#""""#] {
            let body = format!(r#"{{"source_port":{bad}}}"#);
            assert!(
                check_source_port(&members_of(body.as_bytes()).unwrap()).is_err(),
                "{bad}"
            );
        }
    }
}
