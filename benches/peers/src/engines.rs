//! The engines, each set up once, and the per-request inputs each needs, built ahead of the
//! timed loops.

use std::ffi::{CStr, CString, c_char, c_int};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use portcullis::policy::{ApiService, Operation};
use portcullis::route::OperationLookup;
use portcullis::rule::{RuleContext, evaluate};
use portcullis::token::{TokenCache, VerifiedToken};
use portcullis::{DecisionRequest, Engine, PolicyOptions, PolicySet};

use crate::corpus::{self, Profile, Request};

pub const REGO_RULE: &str = "data.portcullis.memegame.allow";

// ---------------------------------------------------------------------------------------
// Portcullis

/// Portcullis with the shipped policies, and per request what the rules-only entry point
/// needs: the operation (pre-matched), its path parameters, the verified token.
pub struct Portcullis {
    pub policies: PolicySet,
    pub engine: Engine,
    pub service: usize,
    /// Per profile: the token as the verified-token cache hands it out.
    pub tokens: Vec<Arc<VerifiedToken>>,
    /// Per profile: `Bearer <token>`.
    pub authorizations: Vec<String>,
}

/// What Portcullis' rules see for one request.
pub struct RulesInput {
    pub operation: usize,
    pub params: Vec<(Box<str>, String)>,
    pub token: usize,
    pub client: Option<IpAddr>,
}

impl Portcullis {
    pub fn new(profiles: &[Profile]) -> Self {
        let policies = portcullis::load_dir(&corpus::policies_dir(), &PolicyOptions::default())
            .unwrap_or_else(|e| panic!("the shipped policies compile:\n{e}"));
        let service = policies
            .services
            .iter()
            .position(|s| &*s.name == "meme-game")
            .expect("the meme-game service");
        let reqs = &policies.services[service].token;
        let cache = TokenCache::new(1024);
        let now = corpus::unix_now() as i64;
        let tokens = profiles
            .iter()
            .map(|p| {
                let (token, _) =
                    portcullis::token::verify_signature_cached(&p.token, reqs, &cache, now)
                        .expect("the profile's token verifies");
                portcullis::token::check_claims(&token, reqs, now).expect("its claims are valid");
                token
            })
            .collect();
        let authorizations = profiles
            .iter()
            .map(|p| format!("Bearer {}", p.token))
            .collect();
        Self {
            policies,
            engine: Engine::default(),
            service,
            tokens,
            authorizations,
        }
    }

    pub fn service(&self) -> &ApiService {
        &self.policies.services[self.service]
    }

    /// The operation match, done once per request ahead of the rules-only loop (and checked:
    /// the mix's operation must be the one Portcullis routes to).
    pub fn rules_input(&self, req: &Request) -> RulesInput {
        let (operation, params) = self.route(req.method, &req.url);
        let name = &*self.service().operations[operation].name;
        assert_eq!(name, req.operation, "{} {}", req.method, req.url);
        RulesInput {
            operation,
            params,
            token: req.profile,
            client: req.client,
        }
    }

    /// URL parse, base-URL match and operation match.
    pub fn route(&self, method: &str, url: &str) -> (usize, Vec<(Box<str>, String)>) {
        let parsed = portcullis::parse_request_url(url).expect("the URL parses");
        let base = self
            .policies
            .match_service(&parsed)
            .expect("a service matches");
        assert_eq!(base.service, self.service);
        match self.policies.match_operation(base, method, &parsed) {
            OperationLookup::Found(found) => (found.operation, found.params),
            other => panic!("{method} {url}: {other:?}"),
        }
    }

    /// Rules only: `portcullis::rule::evaluate` with its trace, on a pre-matched operation and
    /// a verified token.
    #[inline]
    pub fn rules(&self, input: &RulesInput) -> bool {
        let service = self.service();
        let operation: &Operation = &service.operations[input.operation];
        let ctx = RuleContext {
            token: &self.tokens[input.token],
            params: &input.params,
            client: input.client,
            claims: &service.claim_names,
        };
        // A fresh trace per decision, with the capacity `Engine::decide` gives it.
        let mut trace = Vec::with_capacity(8);
        let failures = evaluate(&operation.rules, &ctx, &mut trace);
        std::hint::black_box(&trace);
        failures.is_empty()
    }

    /// Rules with the routing: URL parse, base-URL and operation match, then the rules.
    #[inline]
    pub fn routed_rules(&self, req: &Request) -> bool {
        let parsed = portcullis::parse_request_url(&req.url).expect("the URL parses");
        let base = self
            .policies
            .match_service(&parsed)
            .expect("a service matches");
        let found = match self.policies.match_operation(base, req.method, &parsed) {
            OperationLookup::Found(found) => found,
            _ => return false,
        };
        let service = &self.policies.services[base.service];
        let ctx = RuleContext {
            token: &self.tokens[req.profile],
            params: &found.params,
            client: req.client,
            claims: &service.claim_names,
        };
        let mut trace = Vec::with_capacity(8);
        let failures = evaluate(&service.operations[found.operation].rules, &ctx, &mut trace);
        std::hint::black_box(&trace);
        failures.is_empty()
    }

    /// The whole decision, as the servers call it.
    #[inline]
    pub fn decide(&self, req: &Request) -> portcullis::Decision {
        let headers = [("authorization", self.authorizations[req.profile].as_str())];
        self.engine.decide(
            &self.policies,
            &DecisionRequest {
                method: req.method,
                url: &req.url,
                headers: &headers,
                client: req.client,
                client_cert: None,
            },
            SystemTime::now(),
        )
    }
}

// ---------------------------------------------------------------------------------------
// regorus

pub struct Regorus {
    pub engine: regorus::Engine,
}

impl Regorus {
    pub fn new() -> Self {
        let mut engine = regorus::Engine::new();
        engine
            .add_policy(
                "meme-game.rego".into(),
                corpus::peer_policy("meme-game.rego"),
            )
            .expect("the Rego policy parses");
        Self { engine }
    }

    /// `set_input` + `eval_rule`, with an input already built as a regorus `Value` (cloning
    /// one is a reference-count increment).
    #[inline]
    pub fn eval(&mut self, input: &regorus::Value) -> bool {
        self.engine.set_input(input.clone());
        let v = self
            .engine
            .eval_rule(REGO_RULE.to_owned())
            .expect("eval_rule");
        v == regorus::Value::Bool(true)
    }

    /// The same from the input's JSON text, parsed each time.
    #[inline]
    pub fn eval_json(&mut self, json: &str) -> bool {
        let input = regorus::Value::from_json_str(json).expect("the input parses");
        self.engine.set_input(input);
        let v = self
            .engine
            .eval_rule(REGO_RULE.to_owned())
            .expect("eval_rule");
        v == regorus::Value::Bool(true)
    }
}

/// regorus' compiled path: the policy compiled to a program of its Rego virtual machine
/// (`regorus::rvm`), run with `set_input` + `execute`.
pub struct RegorusVm {
    pub vm: regorus::rvm::RegoVM,
}

impl RegorusVm {
    pub fn new() -> Self {
        let mut engine = regorus::Engine::new();
        engine
            .add_policy(
                "meme-game.rego".into(),
                corpus::peer_policy("meme-game.rego"),
            )
            .expect("the Rego policy parses");
        let entry: regorus::Rc<str> = REGO_RULE.into();
        let compiled = engine
            .compile_with_entrypoint(&entry)
            .expect("the Rego policy compiles");
        let program = regorus::languages::rego::compiler::Compiler::compile_from_policy(
            &compiled,
            &[REGO_RULE],
        )
        .expect("the Rego policy compiles to an RVM program");
        let mut vm = regorus::rvm::RegoVM::new();
        vm.load_program(program);
        Self { vm }
    }

    #[inline]
    pub fn eval(&mut self, input: &regorus::Value) -> bool {
        self.vm.set_input(input.clone());
        self.vm.execute().expect("execute") == regorus::Value::Bool(true)
    }

    #[inline]
    pub fn eval_json(&mut self, json: &str) -> bool {
        let input = regorus::Value::from_json_str(json).expect("the input parses");
        self.vm.set_input(input);
        self.vm.execute().expect("execute") == regorus::Value::Bool(true)
    }
}

// ---------------------------------------------------------------------------------------
// Cedar

/// A Cedar request as separate JSON texts (uids, context, entities), as a PEP sends them.
pub struct CedarJson {
    pub principal: String,
    pub action: String,
    pub resource: String,
    pub context: String,
    pub entities: String,
}

impl CedarJson {
    pub fn of(doc: &serde_json::Value) -> Self {
        Self {
            principal: doc["principal"].to_string(),
            action: doc["action"].to_string(),
            resource: doc["resource"].to_string(),
            context: doc["context"].to_string(),
            entities: doc["entities"].to_string(),
        }
    }
}

#[cfg(feature = "cedar")]
pub use self::cedar::*;

/// cedar-policy (feature `cedar`, on by default).
#[cfg(feature = "cedar")]
mod cedar {
    use std::str::FromStr;

    use super::CedarJson;
    use crate::corpus;

    pub struct Cedar {
        pub authorizer: cedar_policy::Authorizer,
        pub policies: cedar_policy::PolicySet,
        pub schema: cedar_policy::Schema,
    }

    pub struct CedarRequest {
        pub request: cedar_policy::Request,
        pub entities: cedar_policy::Entities,
    }

    impl Cedar {
        pub const AVAILABLE: bool = true;

        pub fn new() -> Self {
            let (schema, warnings) = cedar_policy::Schema::from_cedarschema_str(
                &corpus::peer_policy("meme-game.cedarschema"),
            )
            .expect("the Cedar schema parses");
            for w in warnings {
                eprintln!("cedar schema warning: {w}");
            }
            let policies =
                cedar_policy::PolicySet::from_str(&corpus::peer_policy("meme-game.cedar"))
                    .expect("the Cedar policies parse");
            let validation = cedar_policy::Validator::new(schema.clone())
                .validate(&policies, cedar_policy::ValidationMode::Strict);
            assert!(
                validation.validation_passed(),
                "the Cedar policies validate against the schema:\n{validation}"
            );
            Self {
                authorizer: cedar_policy::Authorizer::new(),
                policies,
                schema,
            }
        }

        /// Builds the request and the principal's entity from the JSON document, ahead of the
        /// rules-only loop (no schema: the JSON carries its own types, `__extn` for the IP
        /// address).
        #[inline]
        pub fn build(doc: &serde_json::Value) -> CedarRequest {
            let uid = |v: &serde_json::Value| {
                cedar_policy::EntityUid::from_json(v.clone()).expect("an entity uid")
            };
            let context = cedar_policy::Context::from_json_value(doc["context"].clone(), None)
                .expect("the context parses");
            let request = cedar_policy::Request::new(
                uid(&doc["principal"]),
                uid(&doc["action"]),
                uid(&doc["resource"]),
                context,
                None,
            )
            .expect("the request is valid");
            let entities = cedar_policy::Entities::from_json_value(doc["entities"].clone(), None)
                .expect("the entities parse");
            CedarRequest { request, entities }
        }

        #[inline]
        pub fn eval(&self, req: &CedarRequest) -> bool {
            self.authorizer
                .is_authorized(&req.request, &self.policies, &req.entities)
                .decision()
                == cedar_policy::Decision::Allow
        }

        /// From the request's JSON texts, parsed each time: entity uids, context, entities
        /// (without the schema: faster here than schema-directed parsing, 27 against 32 µs in
        /// all), then `is_authorized`.
        #[inline]
        pub fn eval_json(&self, j: &CedarJson) -> bool {
            let uid = |s: &str| {
                cedar_policy::EntityUid::from_json(serde_json::from_str(s).expect("JSON"))
                    .expect("an entity uid")
            };
            let context =
                cedar_policy::Context::from_json_str(&j.context, None).expect("the context parses");
            let request = cedar_policy::Request::new(
                uid(&j.principal),
                uid(&j.action),
                uid(&j.resource),
                context,
                None,
            )
            .expect("the request is valid");
            let entities = cedar_policy::Entities::from_json_str(&j.entities, None)
                .expect("the entities parse");
            self.eval(&CedarRequest { request, entities })
        }
    }
}

/// Without the `cedar` feature: no Cedar rows. cedar-policy-core turns on serde_json's
/// `preserve_order`, which changes Portcullis' claim maps from `BTreeMap` to `IndexMap`
/// (feature unification); building without it measures Portcullis as the server is built.
#[cfg(not(feature = "cedar"))]
pub use self::no_cedar::*;

#[cfg(not(feature = "cedar"))]
mod no_cedar {
    use super::CedarJson;

    pub struct Cedar;
    pub struct CedarRequest;

    impl Cedar {
        pub const AVAILABLE: bool = false;

        pub fn new() -> Self {
            Self
        }

        pub fn build(_: &serde_json::Value) -> CedarRequest {
            CedarRequest
        }

        pub fn eval(&self, _: &CedarRequest) -> bool {
            unreachable!("built without the `cedar` feature")
        }

        pub fn eval_json(&self, _: &CedarJson) -> bool {
            unreachable!("built without the `cedar` feature")
        }
    }
}

// ---------------------------------------------------------------------------------------
// OPA, through the Go shared library of the `opa-golib-python-bindings` wheel

type OpaNew = unsafe extern "C" fn() -> u64;
type OpaAddPolicy = unsafe extern "C" fn(u64, *const c_char, *const c_char) -> *mut c_char;
type OpaEvalDocument =
    unsafe extern "C" fn(u64, *const c_char, *const c_char, c_int, c_int) -> *mut c_char;
type OpaFreeString = unsafe extern "C" fn(*mut c_char);

pub struct Opa {
    _lib: libloading::Library,
    handle: u64,
    eval_document: OpaEvalDocument,
    free_string: OpaFreeString,
    path: CString,
}

/// Where the library is: `$OPA_BRIDGE_LIB`, else where `get-opa.sh` unpacks it.
pub fn opa_library_path() -> std::path::PathBuf {
    std::env::var_os("OPA_BRIDGE_LIB").map_or_else(
        || {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/opa/opa_bindings/libopabridge.so")
        },
        Into::into,
    )
}

impl Opa {
    pub fn load() -> Result<Self, String> {
        let path = opa_library_path();
        if !path.exists() {
            return Err(format!(
                "{} not found (run benches/peers/get-opa.sh, or set OPA_BRIDGE_LIB)",
                path.display()
            ));
        }
        // SAFETY: loading the library runs the Go runtime's initialisers, which is what the
        // library is built for (a c-shared Go library); the symbols have the C signatures
        // the wheel's own ctypes bindings declare (opa_bindings/_native.py).
        unsafe {
            let lib = libloading::Library::new(&path).map_err(|e| e.to_string())?;
            let new: OpaNew = *lib.get(b"OpaNew\0").map_err(|e| e.to_string())?;
            let add_policy: OpaAddPolicy =
                *lib.get(b"OpaAddPolicy\0").map_err(|e| e.to_string())?;
            let eval_document: OpaEvalDocument =
                *lib.get(b"OpaEvalDocument\0").map_err(|e| e.to_string())?;
            let free_string: OpaFreeString =
                *lib.get(b"OpaFreeString\0").map_err(|e| e.to_string())?;
            let handle = new();
            let name = CString::new("meme-game.rego").expect("no NUL");
            let source = CString::new(corpus::peer_policy("meme-game.rego")).expect("no NUL");
            let envelope = add_policy(handle, name.as_ptr(), source.as_ptr());
            let text = CStr::from_ptr(envelope).to_string_lossy().into_owned();
            free_string(envelope);
            let parsed: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
            if !parsed["error"].is_null() {
                return Err(format!("OpaAddPolicy: {text}"));
            }
            Ok(Self {
                _lib: lib,
                handle,
                eval_document,
                free_string,
                path: CString::new("portcullis.memegame.allow").expect("no NUL"),
            })
        }
    }

    /// `OpaEvalDocument` with the input as JSON (the only way in), its JSON answer parsed.
    #[inline]
    pub fn eval(&self, input: &CStr) -> bool {
        // SAFETY: the handle is live, both strings are NUL-terminated, and the answer is
        // freed once, with the library's own free.
        let text = unsafe {
            let envelope =
                (self.eval_document)(self.handle, self.path.as_ptr(), input.as_ptr(), 0, 0);
            assert!(!envelope.is_null(), "OpaEvalDocument returned NULL");
            let bytes = CStr::from_ptr(envelope).to_bytes();
            let parsed: serde_json::Value =
                serde_json::from_slice(bytes).expect("OPA answers JSON");
            (self.free_string)(envelope);
            parsed
        };
        match &text["result"][0]["expressions"][0]["value"] {
            serde_json::Value::Bool(b) => *b,
            other => panic!("OPA: unexpected answer {other} in {text}"),
        }
    }
}
