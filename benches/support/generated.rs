//! Generated policy sets of many services, for the matching and compile benchmarks
//! (`benches/decision.rs`) and the decision-time-against-services curve (`benches/peers`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use portcullis::{PolicyOptions, PolicySet, SourceFile};

/// Operations per generated service.
pub const OPERATIONS: usize = 10;
/// Every generated service accepts this audience, so that one token (one cache entry)
/// serves all of them and a decision curve measures routing, not token verification.
pub const AUDIENCE: &str = "bench";

/// The base URL of generated service `i`: even services each have their own host, odd
/// services share one host and differ by path prefix (two levels: team, then service).
pub fn base_url(i: usize) -> String {
    if i.is_multiple_of(2) {
        format!("https://api{i}.example.com/svc{i}/v1")
    } else {
        format!("https://gateway.example.com/team{}/svc{i}/v1", i % 97)
    }
}

/// (methods, path template, a concrete request path, the request method) per operation.
pub const GENERATED_OPERATIONS: [(&str, &str, &str, &str); OPERATIONS] = [
    ("[GET]", "/users", "/users", "GET"),
    ("[GET, PUT]", "/users/{userId}", "/users/u-17", "PUT"),
    (
        "[POST]",
        "/users/{userId}/answers",
        "/users/u-17/answers",
        "POST",
    ),
    (
        "[GET]",
        "/users/{userId}/answers/{answerId}",
        "/users/u-17/answers/a-9",
        "GET",
    ),
    ("[GET, HEAD]", "/memes", "/memes", "GET"),
    ("[GET]", "/memes/{memeId}", "/memes/m-3", "GET"),
    (
        "[POST, PUT, DELETE]",
        "/memes/**",
        "/memes/m-3/tags/x",
        "DELETE",
    ),
    ("[GET]", "/leaderboard", "/leaderboard", "GET"),
    ("[GET]", "/internal/**", "/internal/metrics/cpu", "GET"),
    (
        "[GET]",
        "/games/{gameId}/rounds/{round}",
        "/games/g-1/rounds/3",
        "GET",
    ),
];

fn service_yaml(i: usize) -> String {
    let mut yaml = format!(
        "service: svc-{i}\n\
         baseUrls:\n  - {}\n\
         token:\n  issuer: https://auth.example.com\n  audiences: [{AUDIENCE}]\n  \
         algorithms: [RS256, ES256]\n  jwks:\n    file: keys/meme-game.jwks.json\n\
         operations:\n",
        base_url(i)
    );
    for (j, (methods, path, _, _)) in GENERATED_OPERATIONS.iter().enumerate() {
        yaml.push_str(&format!(
            "  - name: op-{j}\n    methods: {methods}\n    paths: [\"{path}\"]\n"
        ));
        if j % 3 == 0 {
            yaml.push_str("    rules:\n      - scopes: { anyOf: [\"read\"] }\n");
        }
    }
    yaml
}

/// `services` services, 100 per file.
pub fn sources(services: usize) -> Vec<SourceFile> {
    (0..services)
        .step_by(100)
        .map(|first| SourceFile {
            path: PathBuf::from(format!("generated/services-{first:05}.yaml")),
            text: (first..(first + 100).min(services))
                .map(service_yaml)
                .collect::<Vec<_>>()
                .join("---\n"),
        })
        .collect()
}

/// Reads the example JWKS at `jwks` once and serves it as every service's key file.
pub fn key_file_reader(jwks: &Path) -> impl Fn(&Path) -> std::io::Result<Vec<u8>> + use<> {
    let bytes = std::fs::read(jwks).expect("the example JWKS is readable");
    move |path: &Path| {
        assert!(
            path.ends_with("keys/meme-game.jwks.json"),
            "{}",
            path.display()
        );
        Ok(bytes.clone())
    }
}

/// Compiles `sources` with the example JWKS at `jwks`; returns the set and the compile time.
pub fn compile(sources: &[SourceFile], jwks: &Path) -> (PolicySet, Duration) {
    let read_file = key_file_reader(jwks);
    let started = Instant::now();
    let set = portcullis::compile(sources, &read_file, &PolicyOptions::default())
        .unwrap_or_else(|e| panic!("the generated policies compile:\n{e}"));
    (set, started.elapsed())
}

/// One request to a generated set, and what it must match.
pub struct GeneratedRequest {
    pub method: &'static str,
    pub url: String,
    pub service: usize,
    pub operation: usize,
}

/// `n` requests spread over `targets` of the `services` services (far apart in the set) and
/// over the operations.
pub fn requests(services: usize, targets: usize, n: usize) -> Vec<GeneratedRequest> {
    (0..n)
        .map(|k| {
            // 7919 is prime, so consecutive URLs land on services far apart.
            let service = ((k * 7919) % targets) * (services / targets);
            let operation = k % OPERATIONS;
            let (_, _, path, method) = GENERATED_OPERATIONS[operation];
            GeneratedRequest {
                method,
                url: format!("{}{path}?page={k}", base_url(service)),
                service,
                operation,
            }
        })
        .collect()
}
