//! TLS for both listeners (rustls with aws-lc-rs): the server's certificate and key, and for
//! mutual TLS the CAs whose client certificates are accepted.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

use super::TlsFiles;

/// Why the TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{}` holds no usable PEM certificate (`-----BEGIN CERTIFICATE-----`){}", path.display(), reason(.source))]
    Certificate {
        path: PathBuf,
        source: Option<rustls::pki_types::pem::Error>,
    },
    #[error("`{}` holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {source}", path.display())]
    Key {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("the certificate `{}` and the key `{}` cannot serve TLS (does the key belong to the certificate?): {source}", cert.display(), key.display())]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("the client CA file `{}` cannot verify client certificates: {reason}", path.display())]
    ClientCa { path: PathBuf, reason: String },
}

fn reason(source: &Option<rustls::pki_types::pem::Error>) -> String {
    source
        .as_ref()
        .map(|e| format!(": {e}"))
        .unwrap_or_default()
}

/// TLS acceptors of the two listeners: the same identity and client verification, with the
/// application protocols each listener speaks.
pub(crate) struct ServerTls {
    pub(crate) grpc: TlsAcceptor,
    pub(crate) http: TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Fails when a file cannot be read or holds no usable certificate or key, when the key
    /// does not belong to the certificate, or when the client CA file holds no CA.
    pub(crate) fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let certs = certificates(&files.cert)?;
        let key_pem = read(&files.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| TlsError::Key {
            path: files.key.clone(),
            source,
        })?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Identity {
                cert: files.cert.clone(),
                key: files.key.clone(),
                source,
            })?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(path)? {
                    roots.add(cert).map_err(|e| TlsError::ClientCa {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| TlsError::ClientCa {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut http =
            builder
                .with_single_cert(certs, key)
                .map_err(|source| TlsError::Identity {
                    cert: files.cert.clone(),
                    key: files.key.clone(),
                    source,
                })?;
        let mut grpc = http.clone();
        grpc.alpn_protocols = vec![b"h2".to_vec()];
        http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            grpc: TlsAcceptor::from(Arc::new(grpc)),
            http: TlsAcceptor::from(Arc::new(http)),
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate of a PEM file; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Certificate {
            path: path.to_owned(),
            source: Some(source),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Certificate {
            path: path.to_owned(),
            source: None,
        });
    }
    Ok(certs)
}
