//! Cutting text to a cap with a visible marker, and redacting token-shaped text: what every
//! field of a record goes through.

/// Longest marker [`cut_text`] appends; a cut leaves room for it, so that the result,
/// marker included, stays within the cap.
pub(super) const MARKER_RESERVE: usize = 48;
/// What replaces secret header values and token-shaped text.
pub(super) const REDACTED: &str = "REDACTED";

/// Cuts `s` to at most `max` bytes on a char boundary, appending a marker that says how much
/// was cut; the marker is counted within `max` when `max` is at least [`MARKER_RESERVE`].
/// Returns whether it cut.
pub(super) fn cut_text(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let keep = floor_boundary(s, max.saturating_sub(MARKER_RESERVE));
    let more = s.len() - keep;
    s.truncate(keep);
    s.push_str(&format!("…(truncated, {more} more bytes)"));
    s.shrink_to_fit();
    true
}

/// Like [`cut_text`], but keeps the start and the end and cuts the middle.
pub(super) fn cut_middle(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let room = max.saturating_sub(MARKER_RESERVE);
    let head = floor_boundary(s, room * 2 / 3);
    let mut tail = s.len() - (room - head);
    while !s.is_char_boundary(tail) {
        tail += 1;
    }
    let mut cut = String::with_capacity(room + MARKER_RESERVE);
    cut.push_str(&s[..head]);
    cut.push_str(&format!("…(truncated, {} bytes)…", tail - head));
    cut.push_str(&s[tail..]);
    cut.shrink_to_fit();
    *s = cut;
    true
}

/// The largest char boundary of `s` at or below `at`.
fn floor_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Replaces every JWT-shaped run of `s` by `REDACTED` and says whether there was one. The
/// engine never puts a raw token into a decision; this makes sure none reaches the store if
/// it ever did (a token pasted into a URL path, say).
pub(super) fn redact_jwts(s: &mut String) -> bool {
    if !holds_jwt_start(s) {
        return false;
    }
    let mut from = 0;
    let mut found = false;
    while let Some((start, end)) = find_jwt(s, from) {
        s.replace_range(start..end, REDACTED);
        from = start + REDACTED.len();
        found = true;
    }
    found
}

/// Whether `s` has a JWT-shaped run.
pub(super) fn has_jwt(s: &str) -> bool {
    holds_jwt_start(s) && find_jwt(s, 0).is_some()
}

/// Whether `s` holds `eyJ` (`{"` in base64url), where every JWT starts. Every text and value
/// of a record is checked: most are a few bytes, for which `str::contains` spends more on
/// setting up its searcher than on searching.
pub(super) fn holds_jwt_start(s: &str) -> bool {
    const START: &[u8; 3] = b"eyJ";
    // Built once: `memmem::find` sets a searcher up on every call.
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(START));
    let bytes = s.as_bytes();
    if bytes.len() < 64 {
        bytes.windows(START.len()).any(|w| w == START)
    } else {
        FINDER.find(bytes).is_some()
    }
}

/// The next JWT-shaped run of `s` at or after `from`: `eyJ` and at least ten more base64url
/// characters, a dot, a base64url part, a dot, and an optional base64url part.
fn find_jwt(s: &str, from: usize) -> Option<(usize, usize)> {
    let bytes = s.as_bytes();
    let b64 = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
    let run = |at: usize| {
        at + bytes
            .get(at..)
            .map_or(0, |r| r.iter().take_while(|b| b64(b)).count())
    };
    let mut search = from;
    while let Some(offset) = s.get(search..).and_then(|rest| rest.find("eyJ")) {
        let start = search + offset;
        let header_end = run(start);
        if header_end - start >= 13 && bytes.get(header_end) == Some(&b'.') {
            let payload_end = run(header_end + 1);
            if payload_end > header_end + 1 && bytes.get(payload_end) == Some(&b'.') {
                return Some((start, run(payload_end + 1)));
            }
        }
        search = start + 3;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_jwt_start_is_contains_eyj() {
        let texts = [
            "",
            "e",
            "ey",
            "eyJ",
            "eyj",
            "eeyJ",
            "xeyJ",
            "ey eyJ",
            "eye",
            "yJ",
            "é eyJ",
            "eyeyeyJ",
            "abc.eyJhbGciOi.x",
            "EYJ",
            "eyéJ",
            "e\u{0}yJ",
        ];
        let long = "x".repeat(100);
        let texts = texts.iter().map(|t| t.to_string()).chain([
            format!("{long}eyJ"),
            format!("eyJ{long}"),
            long.clone(),
        ]);
        for text in texts {
            assert_eq!(holds_jwt_start(&text), text.contains("eyJ"), "{text:?}");
        }
    }

    #[test]
    fn cuts_on_char_boundaries_with_a_marker_within_the_cap() {
        let mut s = "é".repeat(1000);
        assert!(cut_text(&mut s, 301));
        assert!(s.len() <= 301, "{}", s.len());
        assert!(s.ends_with("more bytes)"), "{s}");
        let mut m = format!("start{}end", "ü".repeat(3000));
        assert!(cut_middle(&mut m, 500));
        assert!(
            m.len() <= 500 && m.starts_with("start") && m.ends_with("end"),
            "{m}"
        );
        let mut short = "short".to_owned();
        assert!(!cut_text(&mut short, 5) && !cut_middle(&mut short, 5));
    }

    proptest::proptest! {
        #[test]
        fn cuts_stay_within_the_cap_for_any_text(s in "\\PC{0,600}", max in 48usize..700) {
            let mut cut = s.clone();
            let was_cut = cut_text(&mut cut, max);
            proptest::prop_assert!(cut.len() <= max);
            proptest::prop_assert_eq!(was_cut, s.len() > max);
            let mut middle = s.clone();
            cut_middle(&mut middle, max);
            proptest::prop_assert!(middle.len() <= max);
            let mut redacted = s;
            redact_jwts(&mut redacted);
        }
    }

    #[test]
    fn token_shaped_text_is_redacted_wherever_it_appears() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyLjAifQ.c2lnbmF0dXJl";
        let mut s = format!("/callback/{jwt}/next?x={jwt}");
        assert!(redact_jwts(&mut s));
        assert_eq!(s, "/callback/REDACTED/next?x=REDACTED");
        let mut harmless = "eyJ but not a token. eyJshort.a.b".to_owned();
        assert!(!redact_jwts(&mut harmless));
    }
}
