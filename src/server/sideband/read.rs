//! Reading a Sideband API call: its JSON object's members in order, their values left as
//! the kit wrote them for the echo, and the members the decision needs checked one by one,
//! so that a call Portcullis cannot use is refused naming the member.

use std::borrow::Cow;
use std::net::IpAddr;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::decision::InvalidInput;

/// A JSON string, borrowed from the request body where it has no escapes.
#[derive(serde::Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// The members of a JSON object in the order sent, their values unparsed; a name sent twice
/// is refused (kits and upstreams could each read a different one).
pub(super) struct Members<'a>(pub(super) Vec<(Cow<'a, str>, &'a RawValue)>);

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
    pub(super) fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
}

/// One entry of a `headers` array: `{"name": "value"}`, kept with its JSON for the echo.
pub(super) struct HeaderEntry<'a> {
    pub(super) name: Cow<'a, str>,
    pub(super) value: Cow<'a, str>,
    pub(super) json: &'a RawValue,
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
        Some(text) => crate::server::parse_client(&text).map(Some).ok_or_else(|| {
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
pub(super) fn members_of(body: &[u8]) -> Result<Members<'_>, InvalidInput> {
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
pub(super) struct AccessRequest<'a> {
    pub(super) members: Members<'a>,
    pub(super) method: Cow<'a, str>,
    pub(super) url: Cow<'a, str>,
    pub(super) headers: Vec<HeaderEntry<'a>>,
    pub(super) client: Option<IpAddr>,
    /// `client_certificate.x5c[0]`: the client certificate, base64 DER.
    pub(super) client_cert: Option<String>,
}

/// A call that cannot be used: why, and what could be read of its method and URL (for the
/// record of the refusal).
pub(super) type Unreadable = (InvalidInput, String, String);

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

pub(super) fn read_access(body: &[u8]) -> Result<AccessRequest<'_>, Unreadable> {
    let members = members_of(body).map_err(|e| (e, String::new(), String::new()))?;
    match access_fields(&members) {
        Ok((method, url, headers, client)) => match client_certificate(&members) {
            Ok(client_cert) => Ok(AccessRequest {
                members,
                method,
                url,
                headers,
                client,
                client_cert,
            }),
            Err(e) => Err(unreadable(&members, e)),
        },
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

/// The client certificate of `client_certificate` (a JWK of the certificate's public key
/// whose `x5c` starts with the certificate itself, base64 DER).
fn client_certificate(members: &Members<'_>) -> Result<Option<String>, InvalidInput> {
    #[derive(serde::Deserialize)]
    struct CertificateJwk {
        x5c: Option<Vec<String>>,
    }
    let Some(raw) = members.get("client_certificate") else {
        return Ok(None);
    };
    if raw.get() == "null" {
        return Ok(None);
    }
    match serde_json::from_str::<CertificateJwk>(raw.get()) {
        Ok(CertificateJwk { x5c: Some(chain) }) if !chain.is_empty() => {
            Ok(chain.into_iter().next())
        }
        _ => Err(invalid(
            "INVALID_VALUE",
            "client_certificate.x5c",
            "`client_certificate` must be a JWK whose `x5c` lists the client certificate (base64 DER) first.".into(),
        )),
    }
}

/// What the response phase reads of a call.
pub(super) struct ResponsePhase<'a> {
    pub(super) members: Members<'a>,
    pub(super) headers: Vec<HeaderEntry<'a>>,
    /// `response_code`.
    pub(super) status: u16,
    /// From `state`, when the access phase gave one.
    pub(super) decision_id: Option<String>,
}

pub(super) fn read_response(body: &[u8]) -> Result<ResponsePhase<'_>, Unreadable> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
