//! A JSON Schema (draft 2020-12) of one policy document, for editors: with the YAML language
//! server, a policy file is validated and completed as it is typed (`portcullis schema`).
//!
//! The decoder in `service.rs` stays the source of truth. The types here mirror its shape
//! (every key it accepts, which are required, value formats) and exist only for their schema;
//! nothing is decoded with them. What a schema cannot say (key files, duplicates, conflicts
//! between operations or services, `{path.…}` references to parameters an operation lacks,
//! upper bounds of durations) is left to `portcullis check`.
//!
//! Scalars follow the decoder: where it takes text it also takes a number or a boolean written
//! without quotes (`audiences: [42]` is the audience `"42"`), and a list of text may be a single
//! value (`methods: GET`).

// The mirror types are never built: only their `JsonSchema` implementations are used.
#![allow(dead_code)]

use std::borrow::Cow;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::Value;

use super::service::{ALGORITHMS, RESERVED_HEADERS};

/// The JSON Schema of one policy document (one service), as `portcullis schema` prints it.
pub fn policy_schema() -> Value {
    let schema = SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<ServiceDocument>();
    let mut value = schema.to_value();
    reflow_descriptions(&mut value);
    value
}

/// Doc comments become descriptions with their line breaks; editors show them best as
/// paragraphs, in plain text and as Markdown (the YAML language server reads
/// `markdownDescription`).
fn reflow_descriptions(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(text)) = map.get("description") {
                let text = text
                    .split("\n\n")
                    .map(|p| p.split('\n').map(str::trim).collect::<Vec<_>>().join(" "))
                    .collect::<Vec<_>>()
                    .join("\n\n");
                map.insert("markdownDescription".into(), Value::String(text.clone()));
                map.insert("description".into(), Value::String(text));
            }
            map.values_mut().for_each(reflow_descriptions);
        }
        Value::Array(items) => items.iter_mut().for_each(reflow_descriptions),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Documents

/// One API service of a Portcullis policy file. A file holds one or more services,
/// separated by `---`. Every key is checked: a misspelt key is an error, never a silently
/// dropped rule. Run `portcullis check <dir>` after each edit: it also checks what this schema
/// cannot (key files, conflicts between services and operations, `{path.…}` references).
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceDocument {
    /// Unique name of the service across all policy files: lower-case letters, digits and `-`
    /// (not first), at most 63 characters, e.g. `meme-game`.
    service: ServiceName,
    /// What the service is, for people reading the policy.
    #[schemars(default)]
    description: Text,
    /// Where the API is served: `https://host[:port]/path-prefix` (or `http://`), without
    /// query, fragment, `.` or `..` segments or percent-encoding.
    ///
    /// A request belongs to the service whose base URL is its longest prefix, compared at
    /// path-segment boundaries (`/api/v1` does not cover `/api/v10`). Scheme, host and port are
    /// part of it; host case and default ports (:443, :80) do not matter.
    base_urls: List<BaseUrl>,
    /// What callers' OAuth access tokens must look like. A failure here is a 401 with a
    /// `WWW-Authenticate` header saying why ("Token expired", "Invalid audience", ...).
    token: Token,
    /// Headers added to the request forwarded upstream on allow, e.g.
    /// `x-user-id: "{token.sub}"`. They replace any header of the same name the client sent,
    /// so a client cannot pose as another user with its own `x-user-id`. Names ignore case;
    /// headers that frame the HTTP message (`host`, `content-length`, `transfer-encoding`,
    /// `connection`, `keep-alive`, `upgrade`, `te`, `trailer`, `proxy-connection`) cannot be
    /// set.
    #[schemars(default)]
    upstream_headers: UpstreamHeaders,
    /// The API operations: methods and path templates relative to the base URL, each with its
    /// access rules. The most specific template wins (a literal segment beats `{param}`,
    /// which beats `**`). A path with no operation is answered with `unmatchedStatus`; a path
    /// whose templates lack only the method is a 405 with an `Allow` header.
    #[schemars(length(min = 1))]
    operations: Vec<Operation>,
    /// Status for paths under a base URL that no operation matches: 403 (the default) or 404,
    /// so that callers cannot probe which paths exist.
    #[schemars(default, extend("default" = 403))]
    unmatched_status: UnmatchedStatus,
}

/// What callers' OAuth access tokens must look like.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields, rename_all = "camelCase")]
struct Token {
    /// The `iss` claim tokens must carry, exactly, e.g. `https://auth.example.com`.
    issuer: Text,
    /// The `aud` values this API accepts: a token's `aud` (a string or a list) must contain
    /// one of these.
    audiences: List<Text>,
    /// The signing algorithms accepted (an allow-list), e.g. `[RS256, ES256]`; `none` is never
    /// accepted. A shared secret (`oct` key) is trusted only when an HS algorithm is listed,
    /// and an RSA public key can never be used as an HS secret.
    algorithms: List<Algorithm>,
    /// Clock skew tolerated for `exp`, `nbf` and `iat`: `30s` (the default) up to `5m`.
    #[schemars(default, extend("default" = "30s"))]
    leeway: Duration,
    /// Where the trusted public keys are: exactly one of `file`, `url` or `discovery`.
    jwks: Jwks,
    /// The claim that holds group names, used by `groups` rules; default `groups`, e.g.
    /// `roles`. A dotted name such as `realm_access.roles` looks into nested objects.
    #[schemars(default, extend("default" = "groups"))]
    groups_claim: Text,
    /// The claim that holds scopes, a space-separated string or a list, used by `scopes`
    /// rules; default `scope`, e.g. `scp`.
    #[schemars(default, extend("default" = "scope"))]
    scope_claim: Text,
}

/// Where the trusted public keys are: exactly one of `file`, `url` or `discovery`.
struct Jwks;

impl JsonSchema for Jwks {
    fn schema_name() -> Cow<'static, str> {
        "Jwks".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        one_of(
            "Where the trusted public keys are: exactly one of `file`, `url` or `discovery`.",
            vec![
                generator.subschema_for::<JwksFile>(),
                generator.subschema_for::<JwksUrl>(),
                generator.subschema_for::<JwksDiscovery>(),
            ],
        )
    }
}

/// Keys from a JWKS file.
#[derive(JsonSchema)]
#[schemars(inline, title = "key file", deny_unknown_fields)]
struct JwksFile {
    /// A JWKS file, relative to this policy file, e.g. `keys/meme-game.jwks.json`. It is
    /// re-read when the policies reload.
    file: Text,
}

/// Keys fetched from a URL.
#[derive(JsonSchema)]
#[schemars(inline, title = "key set URL", deny_unknown_fields)]
struct JwksUrl {
    /// The URL of a JWKS, `https://` (plain `http://` only to a loopback address, with
    /// `--allow-insecure-loopback-jwks`), e.g. `https://auth.example.com/jwks`.
    url: KeyUrl,
    /// How often the key set is fetched again: `10m` (the default) up to `24h`.
    #[schemars(default, extend("default" = "10m"))]
    refresh: Duration,
}

/// Keys found through the issuer's discovery document.
#[derive(JsonSchema)]
#[schemars(inline, title = "discovery", deny_unknown_fields)]
struct JwksDiscovery {
    /// `true`: the keys are those the issuer publishes through its OpenID discovery
    /// document.
    discovery: True,
    /// How often the key set is fetched again: `10m` (the default) up to `24h`.
    #[schemars(default, extend("default" = "10m"))]
    refresh: Duration,
}

/// One API operation: methods and path templates with the rules that guard them.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Operation {
    /// The operation's name, unique in its service; decisions and traces show it, e.g.
    /// `submit-answer`.
    name: Text,
    /// What the operation is, for people reading the policy.
    #[schemars(default)]
    description: Text,
    /// HTTP methods, in upper case (they are case-sensitive), e.g. `[GET, HEAD]`.
    methods: List<Method>,
    /// Path templates relative to the base URL: `{name}` matches one segment, `**` (last only)
    /// any rest, including none (`/memes/**` also matches `/memes`). A rule may use
    /// `{path.name}` when every path of the operation has `{name}`.
    paths: List<PathTemplate>,
    /// The access rules; all must hold. Without rules, any valid token for this API is
    /// allowed.
    #[schemars(default)]
    rules: Vec<Rule>,
    /// At most `requests` per `per` for each subject, client or client address, counted once
    /// the rules allow; past it the request is denied with 429 and `Retry-After`. Windows are
    /// aligned to the clock, and counted across replicas when they share a Redis.
    #[schemars(rename = "rateLimit")]
    rate_limit: Option<RateLimit>,
}

/// A rate limit: `{ key: subject, requests: 100, per: 1m }`.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct RateLimit {
    /// What requests are counted by: `subject` (the token's `sub`), `client` (its client
    /// id) or `ip` (the client address). Requests without the value share one counter.
    key: LimitKey,
    /// How many requests a window allows, from 1.
    requests: Requests,
    /// How long a window lasts: whole seconds, from `1s` to `31d`, e.g. `1m`.
    per: Duration,
}

// ---------------------------------------------------------------------------------------------
// Rules

/// One access rule: exactly one condition (`delegated`, `groups`, `scopes`, `claim`,
/// `clientIp`, `any`, `all` or `not`), with an optional `description`.
struct Rule;

impl JsonSchema for Rule {
    fn schema_name() -> Cow<'static, str> {
        "Rule".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        one_of(
            "One access rule: exactly one condition (`delegated`, `groups`, `scopes`, `claim`, \
             `clientIp`, `any`, `all` or `not`), with an optional `description`. To require \
             two conditions, write two rules (all rules of an operation must hold) or combine \
             them with `all`.",
            vec![
                generator.subschema_for::<DelegatedRule>(),
                generator.subschema_for::<GroupsRule>(),
                generator.subschema_for::<ScopesRule>(),
                generator.subschema_for::<ClaimRule>(),
                generator.subschema_for::<ClientIpRule>(),
                generator.subschema_for::<AnyRule>(),
                generator.subschema_for::<AllRule>(),
                generator.subschema_for::<NotRule>(),
            ],
        )
    }
}

/// Whether the token was issued to a user.
#[derive(JsonSchema)]
#[schemars(inline, title = "delegated rule", deny_unknown_fields)]
struct DelegatedRule {
    /// Why the rule exists; traces show it. A rule without one gets a generated description.
    #[schemars(default)]
    description: Text,
    /// `true`: the token was issued to a user (it has `sub`, and `sub` is not the client's own
    /// `client_id` or `azp`). `false`: a client-credentials token (no `sub`, or `sub` equal to
    /// the client's id).
    delegated: bool,
}

/// The token's groups.
#[derive(JsonSchema)]
#[schemars(inline, title = "groups rule", deny_unknown_fields)]
struct GroupsRule {
    /// Why the rule exists; traces show it. A rule without one gets a generated description.
    #[schemars(default)]
    description: Text,
    /// The token's groups (in the claim `token.groupsClaim` names) must include any one
    /// (`anyOf`) or all (`allOf`) of these names, e.g. `{ anyOf: [players] }`. Comparisons are
    /// exact and case-sensitive.
    groups: SetTest<Text>,
}

/// The token's scopes.
#[derive(JsonSchema)]
#[schemars(inline, title = "scopes rule", deny_unknown_fields)]
struct ScopesRule {
    /// Why the rule exists; traces show it. A rule without one gets a generated description.
    #[schemars(default)]
    description: Text,
    /// The token's scopes (in the claim `token.scopeClaim` names) must include any one
    /// (`anyOf`) or all (`allOf`) of these, e.g. `{ allOf: ["answers:write"] }`. List each
    /// scope separately: a scope has no spaces.
    scopes: SetTest<Scope>,
}

/// A test on one claim.
#[derive(JsonSchema)]
#[schemars(inline, title = "claim rule", deny_unknown_fields)]
struct ClaimRule {
    /// Why the rule exists; traces show it. A rule without one gets a generated description.
    #[schemars(default)]
    description: Text,
    /// A test on one claim: `name` and exactly one of `equals`, `in`, `contains` or `exists`,
    /// e.g. `{ name: sub, equals: "{path.userId}" }`.
    claim: ClaimTest,
}

/// The client's address.
#[derive(JsonSchema)]
#[schemars(
    inline,
    title = "clientIp rule",
    deny_unknown_fields,
    rename_all = "camelCase"
)]
struct ClientIpRule {
    /// Why the rule exists; traces show it. A rule without one gets a generated description.
    #[schemars(default)]
    description: Text,
    /// The client's address must be one of these addresses or in one of these CIDR ranges.
    client_ip: ClientIp,
}

/// At least one of several rules.
#[derive(JsonSchema)]
#[schemars(inline, title = "any rule", deny_unknown_fields)]
struct AnyRule {
    /// Why the rule exists; traces show it. A rule without one gets a generated description.
    #[schemars(default)]
    description: Text,
    /// At least one of these rules must hold.
    #[schemars(length(min = 1))]
    any: Vec<Rule>,
}

/// All of several rules.
#[derive(JsonSchema)]
#[schemars(inline, title = "all rule", deny_unknown_fields)]
struct AllRule {
    /// Why the rule exists; traces show it. A rule without one gets a generated description.
    #[schemars(default)]
    description: Text,
    /// All of these rules must hold.
    #[schemars(length(min = 1))]
    all: Vec<Rule>,
}

/// The negation of a rule.
#[derive(JsonSchema)]
#[schemars(inline, title = "not rule", deny_unknown_fields)]
struct NotRule {
    /// Why the rule exists; traces show it. A rule without one gets a generated description.
    #[schemars(default)]
    description: Text,
    /// This rule must not hold.
    not: Box<Rule>,
}

/// `anyOf` or `allOf` a list of values.
struct SetTest<T>(std::marker::PhantomData<T>);

impl<T: JsonSchema> JsonSchema for SetTest<T> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        format!("SetTest_{}", T::schema_name()).into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        one_of(
            "Exactly one of `anyOf` or `allOf`; combine both with `all`.",
            vec![
                generator.subschema_for::<AnyOf<T>>(),
                generator.subschema_for::<AllOf<T>>(),
            ],
        )
    }
}

#[derive(JsonSchema)]
#[schemars(inline, title = "anyOf", deny_unknown_fields, rename_all = "camelCase")]
struct AnyOf<T> {
    /// The token must have at least one of these.
    any_of: List<T>,
}

#[derive(JsonSchema)]
#[schemars(inline, title = "allOf", deny_unknown_fields, rename_all = "camelCase")]
struct AllOf<T> {
    /// The token must have all of these.
    all_of: List<T>,
}

/// A claim's name and exactly one test.
struct ClaimTest;

impl JsonSchema for ClaimTest {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "ClaimTest".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        one_of(
            "A claim's `name` and exactly one of `equals`, `in`, `contains` or `exists`.",
            vec![
                generator.subschema_for::<ClaimEquals>(),
                generator.subschema_for::<ClaimIn>(),
                generator.subschema_for::<ClaimContains>(),
                generator.subschema_for::<ClaimExists>(),
            ],
        )
    }
}

#[derive(JsonSchema)]
#[schemars(inline, title = "claim equals", deny_unknown_fields)]
struct ClaimEquals {
    /// The claim's name, e.g. `sub`, `client_id` or `tier`; a dotted name such as
    /// `address.country` looks into nested objects.
    name: Text,
    /// The claim's value (a string, number or boolean, compared as text) equals this, e.g.
    /// `"{path.userId}"`. `{path.<parameter>}` and `{token.<claim>}` are replaced by the
    /// request's values; `{{` and `}}` write literal braces.
    equals: ValueTemplate,
}

#[derive(JsonSchema)]
#[schemars(inline, title = "claim in", deny_unknown_fields)]
struct ClaimIn {
    /// The claim's name, e.g. `sub`, `client_id` or `tier`; a dotted name such as
    /// `address.country` looks into nested objects.
    name: Text,
    /// The claim's value equals one of these, e.g. `[gold, platinum]`.
    #[schemars(rename = "in")]
    one_of: List<Text>,
}

#[derive(JsonSchema)]
#[schemars(inline, title = "claim contains", deny_unknown_fields)]
struct ClaimContains {
    /// The claim's name, e.g. `sub`, `client_id` or `tier`; a dotted name such as
    /// `address.country` looks into nested objects.
    name: Text,
    /// The claim (a list, or a space-separated string) contains this value, e.g. `mfa` in
    /// `amr`. `{path.<parameter>}` and `{token.<claim>}` are replaced by the request's values.
    contains: ValueTemplate,
}

#[derive(JsonSchema)]
#[schemars(inline, title = "claim exists", deny_unknown_fields)]
struct ClaimExists {
    /// The claim's name, e.g. `sub`, `client_id` or `tier`; a dotted name such as
    /// `address.country` looks into nested objects.
    name: Text,
    /// `true`: the token has the claim (not null); `false`: it has not.
    exists: bool,
}

#[derive(JsonSchema)]
#[schemars(inline, deny_unknown_fields)]
struct ClientIp {
    /// Addresses and CIDR ranges, e.g. `[10.0.0.0/8, 127.0.0.1, "::1"]` (quote IPv6 values
    /// that start with `:`).
    #[schemars(rename = "in")]
    within: List<IpRange>,
}

// ---------------------------------------------------------------------------------------------
// Values

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
fn one_of(description: &str, schemas: Vec<Schema>) -> Schema {
    json_schema!({ "description": description, "oneOf": schemas })
}

/// Implements `JsonSchema` for a value type whose schema is always inlined.
macro_rules! value_schema {
    ($ty:ident, $schema:expr) => {
        #[derive(Default)]
        struct $ty;

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
struct UpstreamHeaders;

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
struct List<T>(std::marker::PhantomData<T>);

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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;
    use crate::policy::{PolicyOptions, SourceFile, compile};

    fn properties(schema: &Value) -> BTreeSet<String> {
        schema["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .cloned()
            .collect()
    }

    #[test]
    fn top_level_keys_are_the_service_keys() {
        let schema = policy_schema();
        let decoder: BTreeSet<String> = crate::policy::service::SERVICE_KEYS
            .iter()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(properties(&schema), decoder);
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
    }

    const KEYS: &str = include_str!("../../tests/fixtures/policies/keys/single.jwks.json");

    /// Every problem `compile` finds in one policy document.
    fn problems(text: &str) -> Vec<crate::PolicyError> {
        let sources = [SourceFile {
            path: "policies/p.yaml".into(),
            text: text.to_owned(),
        }];
        let read = |_: &Path| Ok(KEYS.as_bytes().to_vec());
        match compile(&sources, &read, &PolicyOptions::default()) {
            Ok(_) => Vec::new(),
            Err(e) => e.0,
        }
    }

    /// A valid document with `{extra}` inserted at a place; `{rule}` is the operation's rule.
    fn document(token_extra: &str, jwks_extra: &str, rule: &str) -> String {
        format!(
            "service: s
baseUrls: [https://s.test]
token:
  issuer: https://issuer.test
  audiences: [s]
  algorithms: [RS256]
  jwks: {{ file: keys/single.jwks.json{jwks_extra} }}
{token_extra}
operations:
  - name: op
    methods: [GET]
    paths: [\"/items/{{id}}\"]
    rules:
      - {rule}
"
        )
    }

    /// The keys the decoder allows at a place, from the help of an unknown key that is close to
    /// none of them.
    fn decoder_keys(text: &str) -> BTreeSet<String> {
        let problems = problems(text);
        let help = problems
            .iter()
            .find(|p| p.message.contains("unknown key `zzzzzzzzzzzzzzzz`"))
            .and_then(|p| p.help.clone())
            .unwrap_or_else(|| panic!("no unknown-key error in {problems:?}"));
        let list = help
            .strip_prefix("the keys allowed here are ")
            .expect("a list of keys");
        list.split(", ")
            .map(|k| k.trim_matches('`').to_owned())
            .collect()
    }

    /// The keys of an object schema that is one of several (`oneOf`): their union.
    fn union_of_keys(schema: &Value) -> BTreeSet<String> {
        schema["oneOf"]
            .as_array()
            .expect("oneOf")
            .iter()
            .flat_map(|branch| {
                assert_eq!(branch["additionalProperties"], false, "{branch}");
                properties(branch)
            })
            .collect()
    }

    #[test]
    fn nested_keys_are_the_decoders() {
        let schema = policy_schema();
        let defs = &schema["$defs"];
        let z = "zzzzzzzzzzzzzzzz";
        let token = decoder_keys(&document(&format!("  {z}: 1"), "", "delegated: true"));
        assert_eq!(properties(&defs["Token"]), token);
        let jwks = decoder_keys(&document("", &format!(", {z}: 1"), "delegated: true"));
        assert_eq!(union_of_keys(&defs["Jwks"]), jwks);
        let operation = decoder_keys(&document("", "", "delegated: true").replace(
            "    methods: [GET]",
            &format!("    methods: [GET]\n    {z}: 1"),
        ));
        assert_eq!(properties(&defs["Operation"]), operation);
        let rule = decoder_keys(&document("", "", &format!("{{ delegated: true, {z}: 1 }}")));
        assert_eq!(union_of_keys(&defs["Rule"]), rule);

        let condition = |name: &str| {
            defs["Rule"]["oneOf"]
                .as_array()
                .unwrap()
                .iter()
                .find_map(|b| b["properties"].get(name).cloned())
                .unwrap()
        };
        let claim = decoder_keys(&document(
            "",
            "",
            &format!("claim: {{ name: sub, exists: true, {z}: 1 }}"),
        ));
        assert_eq!(union_of_keys(&condition("claim")), claim);
        for set in ["groups", "scopes"] {
            let modes = decoder_keys(&document(
                "",
                "",
                &format!("{set}: {{ anyOf: [a], {z}: 1 }}"),
            ));
            assert_eq!(union_of_keys(&condition(set)), modes);
        }
        let client_ip = decoder_keys(&document(
            "",
            "",
            &format!("clientIp: {{ in: [10.0.0.0/8], {z}: 1 }}"),
        ));
        assert_eq!(properties(&condition("clientIp")), client_ip);
    }

    #[test]
    fn algorithms_are_the_decoders() {
        let problems =
            problems(&document("", "", "delegated: true").replace("[RS256]", "[zzzzzzzzzzzz]"));
        let help = problems
            .iter()
            .find_map(|p| p.help.as_deref()?.strip_prefix("supported: "))
            .expect("the supported algorithms");
        assert_eq!(help.split(", ").collect::<Vec<_>>(), ALGORITHMS);
    }

    #[test]
    fn reserved_headers_are_refused_by_the_decoder() {
        for header in RESERVED_HEADERS {
            let text = document(
                &format!("upstreamHeaders:\n  {header}: x"),
                "",
                "delegated: true",
            );
            assert!(
                problems(&text)
                    .iter()
                    .any(|p| p.message.contains("cannot be set upstream")),
                "{header}"
            );
        }
        let text = document("upstreamHeaders:\n  x-host: x", "", "delegated: true");
        assert_eq!(problems(&text), Vec::new());
    }

    /// Whether the schema and the decoder agree on each document: both accept or both refuse.
    fn assert_agree(cases: &[(&str, String)]) {
        let schema = policy_schema();
        let validator = jsonschema::draft202012::new(&schema).expect("the schema compiles");
        let options = PolicyOptions {
            allow_insecure_loopback_jwks: true,
            ..PolicyOptions::default()
        };
        let read = |_: &Path| Ok(KEYS.as_bytes().to_vec());
        for (value, text) in cases {
            let docs = crate::policy::yaml::parse_documents(text)
                .unwrap_or_else(|e| panic!("`{value}` is not YAML: {e:?}"));
            let json = crate::policy::yaml::to_json(&docs[0]);
            let by_schema = validator.is_valid(&json);
            let sources = [SourceFile {
                path: "policies/p.yaml".into(),
                text: text.clone(),
            }];
            let by_decoder = compile(&sources, &read, &options);
            assert_eq!(
                by_schema,
                by_decoder.is_ok(),
                "`{value}`: schema {}, decoder {:?}",
                if by_schema { "accepts" } else { "refuses" },
                by_decoder.err().map(|e| e.to_string())
            );
        }
    }

    /// A document for each value, written where `{}` is in `place` (of `document(...)`).
    fn cases(
        values: &[&'static str],
        make: impl Fn(&str) -> String,
    ) -> Vec<(&'static str, String)> {
        values.iter().map(|v| (*v, make(v))).collect()
    }

    fn with_rule(rule: &str) -> String {
        document("", "", rule)
    }

    #[test]
    fn formats_agree_with_the_decoder() {
        let base = with_rule("delegated: true");
        assert_agree(&cases(
            &[
                "a",
                "meme-game",
                "a-",
                "a1-2",
                "007",
                "Meme",
                "-a",
                "a_b",
                "a.b",
                "''",
                "~",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            ],
            |v| base.replace("service: s", &format!("service: {v}")),
        ));
        assert_agree(&cases(
            &[
                "30s", "5m", "0", "0s", "1m30s", "1m 30s", "30 s", " 30s", "1.5s", "2min",
                "3 mins", "250ms", "30", "s", "30S", "1x", "-1s", "''", "1.s", "true",
            ],
            |v| document(&format!("  leeway: {v}"), "", "delegated: true"),
        ));
        assert_agree(&cases(
            &[
                "https://a.test",
                "https://a.test/",
                "HTTPS://A.test:8443/x",
                "http://a.test:80",
                "https://a.test./x",
                "https://[::1]:8080/x",
                "https://a//b/",
                "https://a/.x/..y",
                "https://a/x;y",
                "ftp://a",
                "https://a/x?y",
                "https://a/x#y",
                "https://a/./x",
                "https://a/x/..",
                "https://a/x/.;y",
                "https://a/%20",
                "https://u@a/x",
                "https://",
                "https://a b",
                "a.test/x",
                "https://a:x/",
                "https://[zz]/",
                "https://a/x\\\\y",
                "https://a/x\\ty",
            ],
            |v| base.replace("[https://s.test]", &format!("[\"{v}\"]")),
        ));
        assert_agree(&cases(
            &[
                "GET",
                "PROPFIND",
                "get",
                "G3T",
                "''",
                "ABCDEFGHIJKLMNOPQRSTU",
                "[GET, GET]",
                "[]",
            ],
            |v| base.replace("[GET]", &format!("[{v}]")),
        ));
        assert_agree(&cases(
            &[
                "/",
                "/a",
                "/a/{id}",
                "/a/**",
                "/**",
                "//a//",
                "/{id}/.x/..y/...",
                "/a/ b",
                "/a/{id}/**",
                "a",
                "''",
                "/a/**/b",
                "/a/x{y}",
                "/a/{y}z",
                "/a/../b",
                "/a/./b",
                "/a/%20",
                "/a/*",
                "/{}",
                "/{a.b}",
                "/a?b",
                "/a#b",
                "/a\\\\b",
                "/a\\tb",
            ],
            |v| base.replace("\"/items/{id}\"", &format!("\"{v}\"")),
        ));
        assert_agree(&cases(
            &[
                "\"{path.id}\"",
                "\"x{token.sub}y\"",
                "\"{{literal}}\"",
                "\"a}}b{{\"",
                "42",
                "\"{token.a{b}\"",
                "\"{nope}\"",
                "\"{token.}\"",
                "\"}\"",
                "\"{\"",
                "\"{path.}\"",
                "\"{path.a b}\"",
                "\"{{token.x}\"",
            ],
            |v| with_rule(&format!("claim: {{ name: sub, equals: {v} }}")),
        ));
        assert_agree(&cases(
            &[
                "x-user-id: \"{token.sub}\"",
                "X-Tenant: t-{token.tenant}",
                "x-n: 7",
                "x-id: \"{path.id}\"",
                "x-bad: \"{x}\"",
                "Host: h",
                "CONTENT-LENGTH: 1",
                "x y: 1",
                "\"x:y\": 1",
                "x-empty: ~",
                "\"\": x",
            ],
            |v| document(&format!("upstreamHeaders:\n  {v}"), "", "delegated: true"),
        ));
        assert_agree(&cases(
            &[
                "10.0.0.0/8",
                "127.0.0.1",
                "\"::1\"",
                "\"2001:db8::/32\"",
                "localhost",
                "10.0.0.0/8/8",
            ],
            |v| with_rule(&format!("clientIp: {{ in: [{v}] }}")),
        ));
        assert_agree(&cases(
            &["[a]", "[a, b]", "a", "[\"a b\"]", "[a, a]", "[]", "[~]"],
            |v| with_rule(&format!("scopes: {{ allOf: {v} }}")),
        ));
        assert_agree(&cases(
            &[
                "url: https://auth.test/jwks",
                "url: https://auth.test/jwks, refresh: 1h",
                "url: http://127.0.0.1:9000/jwks",
                "url: \"http://[::1]/jwks\"",
                "url: http://LocalHost/jwks",
                "url: http://auth.test/jwks",
                "url: ftp://auth.test",
                "url: auth.test/jwks",
                "discovery: true",
                "discovery: true, refresh: 5m",
                "discovery: false",
                "file: keys/single.jwks.json, refresh: 5m",
                "file: k, url: https://auth.test/jwks",
                "refresh: 5m",
            ],
            |v| base.replace("file: keys/single.jwks.json", v),
        ));
        assert_agree(&cases(&["403", "404", "\"404\"", "200", "abc", "~"], |v| {
            document(&format!("unmatchedStatus: {v}"), "", "delegated: true")
        }));
        assert_agree(&cases(
            &[
                "delegated: false",
                "delegated: \"true\"",
                "delegated: yes",
                "{ description: d, delegated: true }",
                "{ description: ~, delegated: true }",
                "{}",
                "description: only",
                "any: []",
                "all: [{ delegated: true }]",
                "not: { delegated: true }",
                "not: []",
                "groups: {}",
                "groups: { anyOf: [a], allOf: [b] }",
                "claim: { name: sub }",
                "claim: { equals: x }",
                "claim: { name: sub, in: [a], exists: true }",
                "claim: { name: sub, exists: 1 }",
                "claim: { name: 5, in: [1, 2] }",
                "clientIp: {}",
                "clientIp: [10.0.0.0/8]",
            ],
            with_rule,
        ));
        let no_rules = base.replace("    rules:\n      - delegated: true\n", "    rules: []\n");
        assert!(no_rules.contains("rules: []"));
        let no_operations = format!(
            "{}operations: []\n",
            &base[..base.find("operations:").unwrap()]
        );
        assert_agree(&[("rules: []", no_rules), ("operations: []", no_operations)]);
    }
}
