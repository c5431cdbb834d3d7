//! The audit message of a record: one of the engine's sentences, rebuilt from the stored URL
//! and id when read, or else its text.

use super::text::{cut_middle, redact_jwts};

/// The audit message quotes the URL; it is cut in the middle so that its verdict survives.
pub(super) const MAX_AUDIT_BYTES: usize = 2 * 1024;

/// The audit message: one of the engine's sentences, rebuilt from the URL, or its text.
#[derive(Debug, Clone)]
pub(super) enum Audit {
    Rendered(AuditSentence),
    Text(Box<str>),
}

/// The audit sentences of the engine (`Denial::render` and the allow in `decision/engine.rs`):
/// the URL quoted between two fixed parts. A decision whose message is none of them (another
/// version's, say) keeps its text.
#[derive(Debug, Clone, Copy)]
pub(super) enum AuditSentence {
    Allowed,
    Denied,
    InvalidToken,
    NoService,
    InvalidUrl,
    Internal,
}

impl AuditSentence {
    pub(super) const ALL: [Self; 6] = [
        Self::Allowed,
        Self::Denied,
        Self::InvalidToken,
        Self::NoService,
        Self::InvalidUrl,
        Self::Internal,
    ];

    /// The text before and after the URL; `Internal` goes on with the id and a full stop.
    fn parts(self) -> (&'static str, &'static str) {
        const REQUEST: &str = "Request to the URL \"";
        match self {
            Self::Allowed => (REQUEST, "\" allowed."),
            Self::Denied => (REQUEST, "\" denied by policy evaluation."),
            Self::InvalidToken => (REQUEST, "\" denied due to an invalid OAuth access token."),
            Self::NoService => ("No API server defines policy for the URL \"", "\"."),
            Self::InvalidUrl => (REQUEST, "\" denied: the URL is invalid."),
            Self::Internal => (REQUEST, "\" denied: internal error in decision "),
        }
    }

    /// Length of the sentence for `url` and `id` before any cut.
    fn full_len(self, url: &str, id: &str) -> usize {
        let (before, after) = self.parts();
        let id = match self {
            Self::Internal => id.len() + 1,
            _ => 0,
        };
        before.len() + url.len() + after.len() + id
    }

    /// Whether `audit` is the whole sentence for `url` and `id`.
    fn is(self, audit: &str, url: &str, id: &str) -> bool {
        let (before, after) = self.parts();
        let rest = audit
            .strip_prefix(before)
            .and_then(|r| r.strip_prefix(url))
            .and_then(|r| r.strip_prefix(after));
        match (self, rest) {
            (Self::Internal, Some(rest)) => rest.strip_prefix(id) == Some("."),
            (_, Some(rest)) => rest.is_empty(),
            (_, None) => false,
        }
    }

    /// The sentence for `url` and `id`, cut as the store cuts an audit message.
    fn render(self, url: &str, id: &str) -> String {
        let (before, after) = self.parts();
        let mut s = String::with_capacity(self.full_len(url, id));
        s.push_str(before);
        s.push_str(url);
        s.push_str(after);
        if let Self::Internal = self {
            s.push_str(id);
            s.push('.');
        }
        if s.len() > MAX_AUDIT_BYTES {
            redact_jwts(&mut s);
            cut_middle(&mut s, MAX_AUDIT_BYTES);
        }
        s
    }
}

impl Audit {
    /// `audit` as stored: a sentence when it rebuilds `audit` exactly from the stored `url`
    /// and `id`.
    pub(super) fn of(audit: &str, url: &str, id: &str) -> Self {
        let found = AuditSentence::ALL.into_iter().find(|sentence| {
            if sentence.full_len(url, id) <= MAX_AUDIT_BYTES {
                sentence.is(audit, url, id)
            } else {
                // A long URL: the message was cut in the middle; only a whole rendering tells.
                audit.starts_with(sentence.parts().0) && sentence.render(url, id) == audit
            }
        });
        match found {
            Some(sentence) => Audit::Rendered(sentence),
            None => Audit::Text(Box::from(audit)),
        }
    }

    pub(super) fn text(&self, url: &str, id: &str) -> String {
        match self {
            Audit::Rendered(sentence) => sentence.render(url, id),
            Audit::Text(text) => text.to_string(),
        }
    }

    pub(super) fn heap_bytes(&self) -> usize {
        match self {
            Audit::Rendered(_) => 0,
            Audit::Text(text) => text.len(),
        }
    }
}
