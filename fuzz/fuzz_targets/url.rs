//! URL parsing and normalisation: no panic, and normalising is idempotent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::route::url::normalize_path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = portcullis::parse_request_url(text);
    if let Ok(once) = normalize_path(text) {
        // Written back with its segments escaped, the normalised path normalises to itself.
        let rewritten: String = once
            .segments()
            .map(|s| {
                let mut out = String::from("/");
                for b in s.bytes() {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        out.push(b as char);
                    } else {
                        out.push_str(&format!("%{b:02X}"));
                    }
                }
                out
            })
            .collect();
        let twice = normalize_path(&rewritten).expect("a normalised path normalises again");
        assert_eq!(once, twice);
    }
});
