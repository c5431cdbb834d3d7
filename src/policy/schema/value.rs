//! The schema's values: text, names, URLs, durations, templates and lists, with the patterns
//! that say what the decoder accepts.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use crate::policy::service::{ALGORITHMS, RESERVED_HEADERS};

/// Units of `humantime::parse_duration`, longest first.
const DURATION_UNITS: &[&str] = &[
    "nanos", "nsec", "ns", "usec", "us", "µs", "millis", "msec", "ms", "seconds", "second", "secs",
    "sec", "s", "minutes", "minute", "mins", "min", "m", "hours", "hour", "hrs", "hr", "h", "days",
    "day", "d", "weeks", "week", "wks", "wk", "w", "months", "month", "M", "years", "year", "yrs",
    "yr", "y",
];

/// A regex that matches `word` in any letter case, e.g. `[Hh][Oo][Ss][Tt]`.
fn any_case(word: &str) -> String {
    word.chars()
        .map(|c| {
            if c.is_ascii_alphabetic() {
                format!("[{}{}]", c.to_ascii_uppercase(), c.to_ascii_lowercase())
            } else {
                regex_escape(c)
            }
        })
        .collect()
}

/// `c` escaped outside a character class, in a way JavaScript's Unicode mode accepts too.
fn regex_escape(c: char) -> String {
    if "\\^$.|?*+()[]{}".contains(c) {
        format!("\\{c}")
    } else {
        c.to_string()
    }
}

/// A path segment of characters outside `excluded` (a character class body), but not `.` or
/// `..`; with `semicolon`, not `.;…` or `..;…` either (dot segments to some servers).
fn segment_regex(excluded: &str, semicolon: bool) -> String {
    let s = if semicolon { ";" } else { "" };
    format!(
        "(?:[^{excluded}.][^{excluded}]*|\\.[^{excluded}.{s}][^{excluded}]*|\\.\\.[^{excluded}{s}][^{excluded}]*)"
    )
}

/// `host[:port]`, as `parse_authority` accepts it (port numbers above 65535 aside).
const AUTHORITY: &str = r"(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?";

fn base_url_pattern() -> String {
    let segment = segment_regex(r"/?#%\\\x00-\x1F\x7F", true);
    format!(
        "^{}://{AUTHORITY}(?:/+{segment})*/*$",
        any_case("http") + "[Ss]?"
    )
}

fn key_url_pattern() -> String {
    let rest = r"(?:[/?#][\s\S]*)?$";
    let loopback = format!(
        r"(?:{}|127(?:\.[0-9]+){{3}}|\[[0:]*:[0:]*1\])\.?",
        any_case("localhost")
    );
    format!(
        "^(?:{}://{AUTHORITY}|{}://{loopback}(?::[0-9]{{0,5}})?){rest}",
        any_case("https"),
        any_case("http"),
    )
}

fn path_template_pattern() -> String {
    let excluded = r"/{}*%\\?#";
    let segment = format!(
        r"(?:\{{[A-Za-z0-9_-]+\}}|{})",
        segment_regex(excluded, false)
    );
    format!(r"^/+(?:{segment}(?:/+{segment})*(?:/+\*\*)?|\*\*)?/*$")
}

fn duration_pattern() -> String {
    let units = DURATION_UNITS.join("|");
    format!(r"^\s*(?:[0-9]+(?:\.[0-9]+)?\s*(?:{units})\s*)+$")
}

/// A template: text with `{token.<claim>}` (and, with `path`, `{path.<parameter>}`)
/// references; `{{` and `}}` are literal braces.
fn template_pattern(path: bool) -> String {
    let path = if path {
        r"|\{path\.[A-Za-z0-9_-]+\}"
    } else {
        ""
    };
    format!(r"^(?:[^{{}}]|\{{\{{|\}}\}}{path}|\{{token\.[^}}]+\}})*$")
}

/// A schema that is exactly one of `schemas`.
pub(super) fn one_of(description: &str, schemas: Vec<Schema>) -> Schema {
    json_schema!({ "description": description, "oneOf": schemas })
}

/// Implements `JsonSchema` for a value type whose schema is always inlined.
macro_rules! value_schema {
    ($ty:ident, $schema:expr) => {
        #[derive(Default)]
        pub(super) struct $ty;

        impl JsonSchema for $ty {
            fn inline_schema() -> bool {
                true
            }

            fn schema_name() -> Cow<'static, str> {
                stringify!($ty).into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                $schema
            }
        }
    };
}

// Where the decoder takes text, it takes any scalar but null: `42` and `true` are the text
// `42` and `true`.
value_schema!(
    Text,
    json_schema!({ "type": ["string", "number", "boolean"] })
);

value_schema!(
    Scope,
    json_schema!({ "type": ["string", "number", "boolean"], "pattern": r"^\S*$",
        "patternErrorMessage": "A scope has no spaces: list each scope separately.",
    })
);

value_schema!(
    ServiceName,
    json_schema!({
        "type": ["string", "integer"],
        "pattern": "^[a-z0-9][a-z0-9-]{0,62}$",
        "patternErrorMessage": "Use lower-case letters, digits and `-` (not first), at most 63 \
            characters, e.g. `meme-game`.",
        "minimum": 0,
        "examples": ["meme-game"],
    })
);

value_schema!(
    BaseUrl,
    json_schema!({
        "type": "string",
        "pattern": base_url_pattern(),
        "patternErrorMessage": "Write it as `https://host[:port]/path-prefix`, without query, \
            fragment, `.` or `..` segments or percent-encoding.",
        "examples": ["https://api.example.com/meme-game/api/v1"],
    })
);

value_schema!(
    KeyUrl,
    json_schema!({
        "type": "string",
        "pattern": key_url_pattern(),
        "patternErrorMessage": "Use an `https://` URL (plain `http` only to a loopback address, \
            with `--allow-insecure-loopback-jwks`).",
        "examples": ["https://auth.example.com/jwks"],
    })
);

value_schema!(
    Algorithm,
    json_schema!({ "type": "string", "enum": ALGORITHMS })
);

value_schema!(
    Duration,
    json_schema!({
        "anyOf": [
            {
                "type": "string",
                "pattern": duration_pattern(),
                "patternErrorMessage": "Write a number and a unit, such as `30s`, `5m` or `1h`.",
                "errorMessage": "Write a number and a unit, such as `30s`, `5m` or `1h`.",
            },
            { "const": 0 },
        ],
        "examples": ["30s", "5m", "1h"],
    })
);

value_schema!(
    Binding,
    json_schema!({ "type": "string", "enum": ["none", "allowed", "required"] })
);

value_schema!(
    LimitKey,
    json_schema!({ "type": "string", "enum": crate::ratelimit::LimitKey::NAMES })
);

value_schema!(
    Requests,
    json_schema!({
        "anyOf": [
            { "type": "integer", "minimum": 1, "maximum": crate::ratelimit::MAX_REQUESTS },
            { "type": "string", "pattern": "^(?:[1-9][0-9]{0,8}|1000000000)$" },
        ],
        "examples": [100],
    })
);

value_schema!(
    UnmatchedStatus,
    json_schema!({ "enum": [403, 404, "403", "404"] })
);

value_schema!(
    Method,
    json_schema!({
        "type": "string",
        "pattern": "^[A-Z]{1,20}$",
        "patternErrorMessage": "Write an HTTP method in upper case (methods are \
            case-sensitive), such as GET, POST, PUT, PATCH or DELETE.",
        "examples": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
    })
);

value_schema!(
    PathTemplate,
    json_schema!({
        "type": "string",
        "pattern": path_template_pattern(),
        "patternErrorMessage": "Write `/literal/{param}/**`: `{name}` is one segment, `**` \
            (last only) any rest; no `.` or `..` segments, `*`, `%`, `?`, `#` or `\\`.",
        "examples": ["/users/{userId}/answers", "/memes/**"],
    })
);

value_schema!(
    IpRange,
    json_schema!({
        "type": "string",
        "pattern": "^[0-9A-Fa-f:.]+(?:/[0-9]{1,3})?$",
        "patternErrorMessage": "Write an IP address or CIDR range, e.g. `10.0.0.0/8`, \
            `192.168.1.7` or `::1/128`.",
        "examples": ["10.0.0.0/8", "127.0.0.1", "::1"],
    })
);

value_schema!(
    ValueTemplate,
    json_schema!({
        "type": ["string", "number", "boolean"],
        "pattern": template_pattern(true),
        "patternErrorMessage": "References are `{path.<parameter>}` or `{token.<claim>}`; \
            write `{{` and `}}` for literal braces.",
    })
);

value_schema!(True, json_schema!({ "const": true }));

/// Header names and value templates.
#[derive(Default)]
pub(super) struct UpstreamHeaders;

impl JsonSchema for UpstreamHeaders {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "UpstreamHeaders".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let reserved = RESERVED_HEADERS
            .iter()
            .map(|h| any_case(h))
            .collect::<Vec<_>>()
            .join("|");
        json_schema!({
            "type": "object",
            "propertyNames": {
                "pattern": "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$",
                "patternErrorMessage": "A header name has letters, digits and `-`.",
                "not": {
                    "pattern": format!("^(?:{reserved})$"),
                },
            },
            "additionalProperties": {
                "description": "The header's value: text with `{token.<claim>}` references \
                    (list claims are joined with commas, missing ones are empty); `{{` and \
                    `}}` write literal braces. `{path.…}` cannot be used: upstream headers are \
                    set for every operation.",
                "type": ["string", "number", "boolean"],
                "pattern": template_pattern(false),
                "patternErrorMessage": "Upstream headers use `{token.<claim>}` references \
                    only; write `{{` and `}}` for literal braces.",
            },
            "examples": [{ "x-user-id": "{token.sub}" }],
        })
    }
}

/// One value, or a non-empty list of distinct values.
#[derive(Default)]
pub(super) struct List<T>(std::marker::PhantomData<T>);

impl<T: JsonSchema> JsonSchema for List<T> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        format!("List_{}", T::schema_name()).into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let item = generator.subschema_for::<T>();
        json_schema!({
            "anyOf": [
                { "type": "array", "items": item, "minItems": 1, "uniqueItems": true },
                item,
            ],
        })
    }
}
