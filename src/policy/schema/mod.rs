//! A JSON Schema (draft 2020-12) of one policy document, for editors: with the YAML language
//! server, a policy file is validated and completed as it is typed (`portcullis schema`).
//!
//! The decoder in `service/` stays the source of truth. The types here mirror its shape
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
mod rule;
#[cfg(test)]
mod tests;
mod value;

use std::borrow::Cow;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::Value;

use self::rule::Rule;
use self::value::{
    Algorithm, BaseUrl, Binding, Duration, KeyUrl, LimitKey, List, Method, PathTemplate, Requests,
    ServiceName, Text, True, UnmatchedStatus, UpstreamHeaders, one_of,
};

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
    /// Sender-constrained tokens (RFC 8705 certificate-bound, RFC 9449 DPoP): `none` (the
    /// default) ignores the token's `cnf` and treats `Authorization: DPoP` as no bearer
    /// token; `allowed` checks whatever binding a token has (`cnf.x5t#S256` against the
    /// client certificate, `cnf.jkt` against the `DPoP` proof) and lets unbound tokens pass;
    /// `required` refuses tokens without one.
    #[schemars(default, extend("default" = "none"))]
    binding: Binding,
    /// DPoP proof checks.
    dpop: Option<Dpop>,
}

/// DPoP proof checks.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Dpop {
    /// How far a proof's `iat` may be from now, and how long its `jti` is remembered against
    /// replay: `60s` (the default) up to `10m`.
    #[schemars(default, extend("default" = "60s"))]
    window: Duration,
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
