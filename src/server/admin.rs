//! Who may read recent decisions and metrics: they can hold personal data (subjects, URLs,
//! client addresses). Open on a loopback listener; elsewhere only with the admin bearer
//! token, compared in constant time.

use std::net::SocketAddr;

/// Access to the decisions API, the decisions page's data and metrics on one listener.
#[derive(Clone)]
pub enum AdminAccess {
    /// The listener is on a loopback address and no token is configured.
    Loopback,
    /// Requests must carry `Authorization: Bearer <token>`; the SHA-256 of the token.
    Token([u8; 32]),
    /// The listener is reachable from elsewhere and no token is configured: refused.
    Refused,
}

impl std::fmt::Debug for AdminAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token's digest.
        f.write_str(match self {
            AdminAccess::Loopback => "Loopback",
            AdminAccess::Token(_) => "Token",
            AdminAccess::Refused => "Refused",
        })
    }
}

/// Why an admin request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminDenial {
    /// No or the wrong token (HTTP 401, gRPC UNAUTHENTICATED).
    BadToken,
    /// Not served on this listener without a token (HTTP 403, gRPC PERMISSION_DENIED).
    NotConfigured,
}

impl AdminDenial {
    pub fn message(self) -> &'static str {
        match self {
            AdminDenial::BadToken => {
                "This endpoint needs the admin token: send `Authorization: Bearer <admin token>`."
            }
            AdminDenial::NotConfigured => {
                "Recent decisions and metrics are served only on a loopback listener unless an admin token is configured (--admin-token-file or PORTCULLIS_ADMIN_TOKEN)."
            }
        }
    }
}

/// SHA-256 of `bytes`: secrets are kept and compared as digests, which have one length
/// whatever was sent.
pub(crate) fn digest(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref());
    out
}

impl AdminAccess {
    /// The access rule of a listener bound to `addr`, with or without a configured token.
    pub fn for_listener(addr: SocketAddr, token: Option<&str>) -> Self {
        match token {
            Some(token) => AdminAccess::Token(digest(token.as_bytes())),
            None if addr.ip().is_loopback() => AdminAccess::Loopback,
            None => AdminAccess::Refused,
        }
    }

    /// Checks the `Authorization` header value of an admin request.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), AdminDenial> {
        match self {
            AdminAccess::Loopback => Ok(()),
            AdminAccess::Refused => Err(AdminDenial::NotConfigured),
            AdminAccess::Token(expected) => {
                let presented = authorization
                    .and_then(|v| {
                        let (scheme, rest) = v.split_at_checked(7)?;
                        scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
                    })
                    .ok_or(AdminDenial::BadToken)?;
                // Digests have the same length whatever was sent, so the comparison time
                // says nothing about the token.
                aws_lc_rs::constant_time::verify_slices_are_equal(
                    &digest(presented.trim_ascii()),
                    expected,
                )
                .map_err(|_| AdminDenial::BadToken)
            }
        }
    }
}

/// The admin token from `PORTCULLIS_ADMIN_TOKEN`, or from a file (trimmed).
///
/// Fails when the file cannot be read or the token is empty.
pub fn load_token(file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    let token = match (file, std::env::var("PORTCULLIS_ADMIN_TOKEN")) {
        (Some(path), _) => std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("cannot read the admin token file {}: {e}", path.display())
        })?,
        (None, Ok(value)) => value,
        (None, Err(_)) => return Ok(None),
    };
    let token = token.trim().to_owned();
    anyhow::ensure!(!token.is_empty(), "the admin token is empty");
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_open_and_elsewhere_needs_a_token() {
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert!(AdminAccess::for_listener(local, None).check(None).is_ok());
        assert_eq!(
            AdminAccess::for_listener(public, None).check(None),
            Err(AdminDenial::NotConfigured)
        );
        let with_token = AdminAccess::for_listener(public, Some("s3cret"));
        assert!(with_token.check(Some(b"Bearer s3cret")).is_ok());
        assert!(with_token.check(Some(b"bearer s3cret ")).is_ok());
        assert_eq!(
            with_token.check(Some(b"Bearer s3cre")),
            Err(AdminDenial::BadToken)
        );
        assert_eq!(
            with_token.check(Some(b"Basic s3cret")),
            Err(AdminDenial::BadToken)
        );
        assert_eq!(with_token.check(None), Err(AdminDenial::BadToken));
        // A token also guards a loopback listener.
        assert!(
            AdminAccess::for_listener(local, Some("s3cret"))
                .check(None)
                .is_err()
        );
        assert_eq!(format!("{with_token:?}"), "Token");
    }
}
