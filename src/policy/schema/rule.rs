//! The schema's mirror of an access rule: exactly one condition, nested under `any`, `all`
//! and `not`.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator};

use super::value::{IpRange, List, Scope, Text, ValueTemplate, one_of};

/// One access rule: exactly one condition (`delegated`, `groups`, `scopes`, `claim`,
/// `clientIp`, `any`, `all` or `not`), with an optional `description`.
pub(super) struct Rule;

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
