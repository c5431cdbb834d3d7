//! Policy files (SPEC §6, §6a): read, validated and compiled into an immutable [`PolicySet`].
//!
//! [`compile`] takes file contents and a key-file reader and does no other I/O;
//! [`load_dir`] is the thin wrapper that reads a directory.

mod decode;
pub mod err;
pub mod schema;
mod service;
pub mod yaml;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use self::err::Errors;
pub use self::err::{ErrorKind, PolicyError, PolicyErrors};
pub(crate) use self::service::check_key_url;
use self::service::{DocumentContext, decode_service};
use crate::ratelimit::RateLimit;
use crate::route::url::RequestUrl;
use crate::route::{BaseMatch, BaseUrlIndex, OperationIndex, OperationLookup};
use crate::rule::{AccessRule, ClaimNames, Template};
use crate::token::{ClaimPath, TokenRequirements};

/// Largest policy file read.
pub const MAX_POLICY_FILE: u64 = 4 * 1024 * 1024;

#[derive(Debug, Clone, Default)]
pub struct PolicyOptions {
    /// Lets `jwks.url` use plain `http` to a loopback address.
    pub allow_insecure_loopback_jwks: bool,
    /// Where remote key sets are kept across reloads; without one, each compile starts with
    /// empty remote key sets (tokens of those services get `KEYS_UNAVAILABLE`).
    pub remote_keys: Option<Arc<crate::token::remote::RemoteKeyRegistry>>,
}

/// One API operation: methods and path templates with the rules that guard them.
#[derive(Debug)]
pub struct Operation {
    pub name: Arc<str>,
    pub description: Option<String>,
    pub methods: Vec<Box<str>>,
    pub paths: Vec<String>,
    pub rules: Vec<AccessRule>,
    /// Checked once the rules allow: past it, the request is denied with 429.
    pub rate_limit: Option<RateLimit>,
    /// `file:line` where the operation is written.
    pub location: Arc<str>,
}

/// One API service, compiled.
#[derive(Debug)]
pub struct ApiService {
    pub name: Arc<str>,
    pub description: Option<String>,
    /// Base URLs in canonical form.
    pub base_urls: Vec<String>,
    /// `file:line` of the service document.
    pub source: Arc<str>,
    pub token: TokenRequirements,
    pub claim_names: ClaimNames,
    pub upstream_headers: Vec<(Box<str>, Template)>,
    pub operations: Vec<Operation>,
    pub(crate) operation_index: OperationIndex,
    /// Status when a path is under the base URL but no operation matches (403 or 404).
    pub unmatched_status: u16,
    /// The token claims its rules and upstream headers read, which a decision's record keeps
    /// for replay; in name order.
    pub recorded_claims: Box<[ClaimPath]>,
    /// This compiled service's own number in the process, never reused (reloads compile new
    /// ones): what a cached token's facts read for it are kept under.
    pub id: u64,
}

/// A new [`ApiService::id`].
pub(crate) fn next_service_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A validated, compiled, immutable set of services. Swapped whole on reload.
#[derive(Debug)]
pub struct PolicySet {
    pub services: Vec<ApiService>,
    pub(crate) base_urls: BaseUrlIndex,
    revision: Arc<str>,
    /// The policy files and key files it was compiled from, for watching.
    inputs: Vec<PathBuf>,
}

impl PolicySet {
    /// A content hash of the policy files and key files it was compiled from.
    pub fn revision(&self) -> &Arc<str> {
        &self.revision
    }

    /// The policy files and key files this set was compiled from.
    pub fn inputs(&self) -> &[PathBuf] {
        &self.inputs
    }

    pub fn service(&self, name: &str) -> Option<&ApiService> {
        self.services.iter().find(|s| &*s.name == name)
    }

    /// The service whose base URL is the longest segment-boundary prefix of `url`
    /// (pipeline step 1).
    pub fn match_service(&self, url: &RequestUrl<'_>) -> Option<BaseMatch> {
        self.base_urls.lookup(url)
    }

    /// The operation of a matched service for `method` on the rest of `url`'s path
    /// (pipeline step 3).
    pub fn match_operation(
        &self,
        base: BaseMatch,
        method: &str,
        url: &RequestUrl<'_>,
    ) -> OperationLookup {
        self.services[base.service]
            .operation_index
            .lookup(method, &url.path, base.consumed)
    }
}

/// A policy file's name (as shown in errors) and text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

/// Compiles policy files into a [`PolicySet`]; key files are read through `read_file`, with
/// paths relative to the directory of the policy file that names them.
///
/// Fails with every problem found in every file; nothing is half-loaded.
pub fn compile(
    sources: &[SourceFile],
    read_file: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
    options: &PolicyOptions,
) -> Result<PolicySet, PolicyErrors> {
    let mut problems = Vec::new();
    let mut decoded = Vec::new();
    let mut key_material = Vec::new();
    for source in sources {
        let file = source.path.display().to_string();
        let mut errs = Errors {
            file: &file,
            list: &mut problems,
        };
        let documents = match yaml::parse_documents(&source.text) {
            Ok(docs) => docs,
            Err(e) => {
                errs.push(e.pos, ErrorKind::Syntax, e.message, e.help);
                continue;
            }
        };
        let dir = source.path.parent().unwrap_or(Path::new("."));
        for doc in &documents {
            let mut ctx = DocumentContext {
                dir,
                read_file,
                options,
                key_material: &mut key_material,
            };
            if let Some(service) = decode_service(doc, &mut errs, &mut ctx) {
                decoded.push((file.clone(), service));
            }
        }
    }

    let mut services: Vec<ApiService> = Vec::with_capacity(decoded.len());
    let mut base_urls = BaseUrlIndex::default();
    // Every service document with a name, broken or not: (name, file:line), by index in
    // `base_urls`.
    let mut seen: Vec<(String, String)> = Vec::with_capacity(decoded.len());
    for (file, d) in decoded {
        let mut errs = Errors {
            file: &file,
            list: &mut problems,
        };
        let place = format!("{file}:{}", d.name_pos.line);
        if let Some((_, first)) = seen.iter().find(|(name, _)| *name == d.name) {
            errs.push(
                d.name_pos,
                ErrorKind::Conflict,
                format!("service `{}` is defined twice (first at {first})", d.name),
                "service names are unique across all policy files; rename one",
            );
            continue;
        }
        let index = seen.len();
        for (i, (origin, path, pos)) in d.base_urls.iter().enumerate() {
            if let Some(owner) = base_urls.insert(origin, path, index, i) {
                let (owner_name, owner_place) = seen
                    .get(owner)
                    .map_or((d.name.as_str(), None), |(n, p)| (n.as_str(), Some(p)));
                errs.push(
                    *pos,
                    ErrorKind::Conflict,
                    format!(
                        "base URL `{}` is already served by service `{owner_name}`{}",
                        service::display_base_url(origin, path),
                        owner_place.map(|p| format!(" ({p})")).unwrap_or_default()
                    ),
                    "a base URL belongs to one service; nested prefixes (`/v2` and `/v2/admin`) are fine",
                );
            }
        }
        seen.push((d.name, place));
        match d.service {
            Some(service) => services.push(service),
            // Indexes in `base_urls` follow `seen`; the set is not built when a document is
            // broken, so the mismatch never reaches a decision.
            None => debug_assert!(!problems.is_empty()),
        }
    }
    if services.is_empty() && problems.is_empty() {
        problems.push(PolicyError {
            file: sources
                .first()
                .and_then(|s| s.path.parent())
                .map_or_else(|| "policies".to_owned(), |p| p.display().to_string()),
            pos: None,
            kind: ErrorKind::InvalidValue,
            message: "no API service is defined".into(),
            help: Some(
                "add a policy file (`*.yaml`, `*.yml` or `*.json`) with a `service:` document"
                    .into(),
            ),
        });
    }
    if !problems.is_empty() {
        return Err(PolicyErrors(problems));
    }
    let revision = revision(sources, &key_material);
    let inputs = sources
        .iter()
        .map(|s| s.path.clone())
        .chain(key_material.iter().map(|(name, _)| PathBuf::from(name)))
        .collect();
    Ok(PolicySet {
        services,
        base_urls,
        revision,
        inputs,
    })
}

fn revision(sources: &[SourceFile], keys: &[(String, Vec<u8>)]) -> Arc<str> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for s in sources {
        let name = s.path.display().to_string();
        ctx.update(&(name.len() as u64).to_le_bytes());
        ctx.update(name.as_bytes());
        ctx.update(&(s.text.len() as u64).to_le_bytes());
        ctx.update(s.text.as_bytes());
    }
    for (name, bytes) in keys {
        ctx.update(&(name.len() as u64).to_le_bytes());
        ctx.update(name.as_bytes());
        ctx.update(&(bytes.len() as u64).to_le_bytes());
        ctx.update(bytes);
    }
    let digest = ctx.finish();
    digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into()
}

/// Whether `path` is a policy file of a directory: `*.yaml`, `*.yml` or `*.json`, but not a
/// test suite (`*.test.yaml`, `*.test.yml`, `*.test.json`).
pub fn is_policy_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let is_policy = [".yaml", ".yml", ".json"]
        .iter()
        .any(|ext| name.ends_with(ext));
    let is_test = [".test.yaml", ".test.yml", ".test.json"]
        .iter()
        .any(|ext| name.ends_with(ext));
    is_policy && !is_test && !name.starts_with('.')
}

/// Reads the policy files directly in `dir` (subdirectories hold keys and data) and compiles
/// them.
///
/// Fails when the directory or a file cannot be read, and with every policy problem.
pub fn load_dir(dir: &Path, options: &PolicyOptions) -> Result<PolicySet, PolicyErrors> {
    let (sources, problems) = read_sources(dir);
    compile_read(dir, &sources, problems, options)
}

/// Compiles sources read by [`read_sources`], adding the problems met while reading them.
pub fn compile_read(
    dir: &Path,
    sources: &[SourceFile],
    mut problems: Vec<PolicyError>,
    options: &PolicyOptions,
) -> Result<PolicySet, PolicyErrors> {
    if sources.is_empty() && problems.is_empty() {
        return Err(PolicyErrors(vec![PolicyError {
            file: dir.display().to_string(),
            pos: None,
            kind: ErrorKind::Io,
            message: "no policy files (`*.yaml`, `*.yml`, `*.json`) in this directory".into(),
            help: Some("point to the directory that holds the policy files".into()),
        }]));
    }
    let compiled = compile(sources, &read_key_file, options);
    match (compiled, problems.is_empty()) {
        (Ok(set), true) => Ok(set),
        (Ok(_), false) => Err(PolicyErrors(problems)),
        (Err(PolicyErrors(mut more)), _) => {
            problems.append(&mut more);
            Err(PolicyErrors(problems))
        }
    }
}

/// The policy files of `dir` (sorted by name) and the problems met reading them.
pub fn read_sources(dir: &Path) -> (Vec<SourceFile>, Vec<PolicyError>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            return (
                Vec::new(),
                vec![PolicyError::io(
                    dir,
                    format!("cannot read the policy directory: {e}"),
                )],
            );
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| is_policy_file(p) && p.is_file())
        .collect();
    paths.sort();
    let mut sources = Vec::with_capacity(paths.len());
    let mut problems = Vec::new();
    for path in paths {
        match read_policy_file(&path) {
            Ok(text) => sources.push(SourceFile { path, text }),
            Err(message) => problems.push(PolicyError::io(&path, message)),
        }
    }
    (sources, problems)
}

/// The revision of policy files alone, for a set that did not compile (key files are read
/// only while compiling).
pub fn sources_revision(sources: &[SourceFile]) -> Arc<str> {
    revision(sources, &[])
}

fn read_policy_file(path: &Path) -> Result<String, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("cannot read: {e}"))?
        .len();
    if len > MAX_POLICY_FILE {
        return Err(format!(
            "the file is {len} bytes; policy files are at most {MAX_POLICY_FILE} bytes"
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "the file is not UTF-8 text".to_owned())
}

/// Largest key file read.
const MAX_KEY_FILE: u64 = 1024 * 1024;

fn read_key_file(path: &Path) -> std::io::Result<Vec<u8>> {
    read_limited(path, MAX_KEY_FILE)
}

/// Reads a file of at most `max` bytes; a larger one is refused without reading it.
pub(crate) fn read_limited(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let len = std::fs::metadata(path)?.len();
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the file is {len} bytes; at most {max} bytes are read"),
        ));
    }
    std::fs::read(path)
}
