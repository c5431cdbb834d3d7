//! Hostile policy text: whatever the bytes, compiling gives a policy set or errors with
//! positions, never a panic; a mangled policy that still compiles decides without panicking.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use portcullis::{DecisionRequest, Engine, PolicyOptions, SourceFile};
use proptest::prelude::*;

fn read_key(path: &Path) -> std::io::Result<Vec<u8>> {
    // Key files resolve against the shipped example's directory; anything else is missing.
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    std::fs::read(base.join(path.strip_prefix("policies").unwrap_or(path)))
}

fn compile(text: &str) -> Result<portcullis::PolicySet, portcullis::PolicyErrors> {
    portcullis::compile(
        &[SourceFile {
            path: PathBuf::from("policies/fuzzed.yaml"),
            text: text.to_owned(),
        }],
        &read_key,
        &PolicyOptions::default(),
    )
}

fn example() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/meme-game.yaml"))
        .unwrap()
}

/// A mangling of the example: cut a range, insert text, or swap two lines.
#[derive(Debug, Clone)]
enum Edit {
    Cut(usize, usize),
    Insert(usize, String),
    SwapLines(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0usize..40).prop_map(|(a, n)| Edit::Cut(a, n)),
        (
            any::<usize>(),
            prop_oneof![
                Just("{".to_owned()),
                Just(": ".to_owned()),
                Just("\n  - ".to_owned()),
                Just("&a *a".to_owned()),
                Just("!!binary".to_owned()),
                Just("{path.x}".to_owned()),
                Just("\t".to_owned()),
                Just("---\n".to_owned()),
                "\\PC{0,12}",
            ]
        )
            .prop_map(|(a, s)| Edit::Insert(a, s)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
    ]
}

fn apply(text: &str, edit: &Edit) -> String {
    let boundary = |s: &str, i: usize| {
        let mut i = i % (s.len() + 1);
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    match edit {
        Edit::Cut(at, n) => {
            let a = boundary(text, *at);
            let b = boundary(text, a + n);
            format!("{}{}", &text[..a], &text[b.max(a)..])
        }
        Edit::Insert(at, s) => {
            let a = boundary(text, *at);
            format!("{}{s}{}", &text[..a], &text[a..])
        }
        Edit::SwapLines(a, b) => {
            let mut lines: Vec<&str> = text.lines().collect();
            let (a, b) = (a % lines.len(), b % lines.len());
            lines.swap(a, b);
            lines.join("\n")
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_text_compiles_or_fails_with_positioned_errors(text in "\\PC{0,400}") {
        if let Err(errors) = compile(&text) {
            prop_assert!(!errors.0.is_empty());
        }
    }

    #[test]
    fn a_mangled_example_never_panics_and_still_decides(edits in prop::collection::vec(edit(), 1..4)) {
        let mut text = example();
        for e in &edits {
            text = apply(&text, e);
        }
        match compile(&text) {
            Err(errors) => {
                // Every error names the file, and a position when one is known.
                for e in &errors.0 {
                    prop_assert_eq!(&e.file, "policies/fuzzed.yaml");
                }
            }
            Ok(set) => {
                let engine = Engine::default();
                for (method, url) in [
                    ("POST", "https://localhost:8443/meme-game/api/v1/users/user.0/answers"),
                    ("GET", "https://localhost:8443/meme-game/api/v1/leaderboard"),
                    ("DELETE", "https://api.example.com/meme-game/api/v1/memes/1"),
                ] {
                    let d = engine.decide(&set, &DecisionRequest { method, url, headers: &[("authorization", "Bearer x.y.z")], client: None, client_cert: None }, SystemTime::now());
                    prop_assert!(d.status != 200 || d.is_allowed());
                    prop_assert_ne!(d.status, 500, "{:?}", d.body);
                }
            }
        }
    }
}

#[test]
fn deeply_nested_and_aliased_documents_are_refused_not_overflowed() {
    let deep = format!(
        "service: x\noperations: {}{}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert!(compile(&deep).is_err());
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 0..12 {
        bomb.push_str(&format!(
            "b{i}: &b{i} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n",
            p = if i == 0 {
                "a".to_owned()
            } else {
                format!("b{}", i - 1)
            }
        ));
    }
    assert!(compile(&bomb).is_err(), "an alias bomb is refused");
}
