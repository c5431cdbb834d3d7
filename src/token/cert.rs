//! Client certificates as gateways pass them, and their SHA-256 thumbprints (RFC 8705
//! `x5t#S256`), cached per certificate text so that a repeated certificate costs a lookup.

use base64::Engine as _;

use super::cache::TextCache;

/// Longest certificate text accepted from a gateway (a URL-encoded PEM chain of a few
/// certificates stays far below it).
pub const MAX_CERT_TEXT: usize = 32 * 1024;

/// Certificates whose thumbprint is kept by default.
pub const DEFAULT_THUMBPRINT_CAPACITY: usize = 1_024;

/// Longest certificate text kept in the cache: one URL-encoded PEM certificate fits (about
/// 2 KiB for EC, 3 KiB for RSA 2048); longer texts (chains) are hashed each time, so that
/// the cache stays within 8 MiB.
const MAX_CACHED_TEXT: usize = 8 * 1024;

/// A SHA-256 certificate thumbprint.
pub type Thumbprint = [u8; 32];

/// Why a certificate text gives no thumbprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertError {
    TooLarge,
    /// Neither PEM, RFC 9440 `:base64:` nor base64 DER.
    Unreadable,
}

/// The DER bytes of the first certificate in `text`, which is one of: PEM (URL-encoded, as
/// Envoy's `source.certificate` and nginx's `$ssl_client_escaped_cert` carry it, or plain),
/// an RFC 9440 `Client-Cert` byte sequence (`:base64:`), or base64 DER (a JWK's `x5c`
/// member, as the Sideband kits send it).
pub fn certificate_der(text: &str) -> Result<Vec<u8>, CertError> {
    if text.len() > MAX_CERT_TEXT {
        return Err(CertError::TooLarge);
    }
    let text = text.trim();
    if let Some(inner) = text.strip_prefix(':').and_then(|t| t.strip_suffix(':')) {
        return base64::engine::general_purpose::STANDARD
            .decode(inner)
            .map_err(|_| CertError::Unreadable);
    }
    let decoded = percent_encoding::percent_decode_str(text).decode_utf8_lossy();
    if decoded.contains("-----BEGIN") {
        // The first block of a chain is the client's own certificate.
        return pem::parse_many(decoded.as_bytes())
            .ok()
            .and_then(|blocks| blocks.into_iter().find(|b| b.tag() == "CERTIFICATE"))
            .map(|b| b.into_contents())
            .ok_or(CertError::Unreadable);
    }
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| CertError::Unreadable)
}

/// The RFC 8705 thumbprint of a DER certificate.
pub fn thumbprint(der: &[u8]) -> Thumbprint {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Thumbprints of the certificates seen lately, by certificate text (see [`TextCache`]).
#[derive(Debug)]
pub struct ThumbprintCache(TextCache<Thumbprint>);

impl Default for ThumbprintCache {
    fn default() -> Self {
        Self::new(DEFAULT_THUMBPRINT_CAPACITY)
    }
}

impl ThumbprintCache {
    pub fn new(capacity: usize) -> Self {
        Self(TextCache::new(capacity, MAX_CACHED_TEXT))
    }

    /// The thumbprint of the certificate `text` carries (see [`certificate_der`]).
    ///
    /// Fails when the text holds no readable certificate.
    pub fn thumbprint(&self, text: &str) -> Result<Thumbprint, CertError> {
        self.0
            .get_or_read(text, |text| Ok(thumbprint(&certificate_der(text)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert() -> rcgen::CertifiedKey<rcgen::KeyPair> {
        rcgen::generate_simple_self_signed(vec!["client.test".into()]).unwrap()
    }

    #[test]
    fn every_form_a_gateway_sends_gives_the_thumbprint_of_the_der() {
        let c = cert();
        let der = c.cert.der().to_vec();
        let want = thumbprint(&der);
        let pem = c.cert.pem();
        let escaped: String =
            percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let cache = ThumbprintCache::new(8);
        for text in [pem.clone(), escaped, format!(":{b64}:"), b64] {
            assert_eq!(cache.thumbprint(&text), Ok(want), "{text}");
            assert_eq!(cache.thumbprint(&text), Ok(want), "cached: {text}");
        }
        let chain = format!("{pem}{}", cert().cert.pem());
        assert_eq!(cache.thumbprint(&chain), Ok(want));
    }

    #[test]
    fn garbage_is_refused_not_hashed() {
        let cache = ThumbprintCache::new(8);
        assert_eq!(cache.thumbprint("not a cert!"), Err(CertError::Unreadable));
        assert_eq!(
            cache.thumbprint("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            Err(CertError::Unreadable)
        );
        assert_eq!(
            cache.thumbprint(&"A".repeat(MAX_CERT_TEXT + 1)),
            Err(CertError::TooLarge)
        );
    }
}
