//! Policy compilation: any bytes give a policy set or errors, never a panic.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use portcullis::{PolicyOptions, SourceFile};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let read_key = |_: &Path| -> std::io::Result<Vec<u8>> {
        Ok(br#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#.to_vec())
    };
    let _ = portcullis::compile(
        &[SourceFile { path: PathBuf::from("policies/fuzz.yaml"), text }],
        &read_key,
        &PolicyOptions::default(),
    );
});
