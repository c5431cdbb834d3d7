//! TLS and mutual TLS on both listeners of `portcullis serve`, with certificates made in the
//! test (rcgen): a tonic client calls Envoy's ext_authz Check, an HTTPS client (reqwest with
//! rustls) calls `/healthz`; with `--tls-client-ca`, only clients with a certificate from that
//! CA get through, on both listeners.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portcullis::proto::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use portcullis::proto::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use portcullis::proto::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use rcgen::{CertifiedIssuer, ExtendedKeyUsagePurpose, KeyPair};
use support::pki::{Leaf, ca, leaf};
use support::server::Server;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Every file a test needs: a CA, a server certificate from it for 127.0.0.1 and localhost,
/// a client certificate from it, and a client certificate from another CA.
struct Pki {
    dir: tempfile::TempDir,
    ca: String,
    client: Leaf,
    stranger: Leaf,
}

impl Pki {
    fn new() -> Pki {
        let ca = ca("Portcullis test CA");
        let other_ca = ca_for_strangers();
        let server = leaf(
            &ca,
            "portcullis",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client = leaf(&ca, "envoy", &[], ExtendedKeyUsagePurpose::ClientAuth);
        let stranger = leaf(&other_ca, "envoy", &[], ExtendedKeyUsagePurpose::ClientAuth);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), &server.pem).unwrap();
        std::fs::write(dir.path().join("server.key"), &server.key).unwrap();
        std::fs::write(dir.path().join("client.key"), &client.key).unwrap();
        Pki {
            dir,
            ca: ca.pem(),
            client,
            stranger,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn server_flags(&self, mutual: bool) -> Vec<String> {
        let mut flags = vec![
            "--jwks-start-timeout".to_owned(),
            "0s".to_owned(),
            "--tls-cert".to_owned(),
            self.path("server.pem").display().to_string(),
            "--tls-key".to_owned(),
            self.path("server.key").display().to_string(),
        ];
        if mutual {
            flags.push("--tls-client-ca".to_owned());
            flags.push(self.path("ca.pem").display().to_string());
        }
        flags
    }
}

fn ca_for_strangers() -> CertifiedIssuer<'static, KeyPair> {
    ca("Some other CA")
}

fn start(pki: &Pki, mutual: bool) -> Server {
    let flags = pki.server_flags(mutual);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Server::start(&support::fixtures().join("policies"), &flags)
}

/// A Check as Envoy sends it, for a fixture operation, without a token.
fn check_request() -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                time: None,
                http: Some(HttpRequest {
                    method: "GET".into(),
                    scheme: "https".into(),
                    host: "api.test".into(),
                    path: "/app/v1/items/1".into(),
                    protocol: "HTTP/1.1".into(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

/// Calls ext_authz Check over TLS, presenting `identity` if given; the gRPC status code of
/// the answer, or the error.
async fn check_over_tls(server: &Server, ca: &str, identity: Option<&Leaf>) -> Result<i32, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.pem, &id.key));
    }
    let channel = Channel::from_shared(format!("https://{}", server.grpc))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let response = AuthorizationClient::new(channel)
        .check(check_request())
        .await
        .map_err(|e| format!("check: {e:?}"))?;
    Ok(response.into_inner().status.map_or(0, |s| s.code))
}

/// GET `/healthz` over HTTPS, presenting `identity` if given.
async fn healthz_over_tls(
    server: &Server,
    ca: &str,
    identity: Option<&Leaf>,
) -> Result<u16, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .timeout(Duration::from_secs(10));
    if let Some(id) = identity {
        let pem = format!("{}\n{}", id.key, id.pem);
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    let response = client
        .get(format!("https://{}/healthz", server.http))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(response.status().as_u16())
}

const UNAUTHENTICATED: i32 = 16;

#[tokio::test]
async fn both_listeners_serve_tls_with_the_servers_certificate() {
    let pki = Pki::new();
    let server = start(&pki, false);
    let code = check_over_tls(&server, &pki.ca, None).await;
    assert_eq!(
        code,
        Ok(UNAUTHENTICATED),
        "a Check without a token is denied"
    );
    assert_eq!(healthz_over_tls(&server, &pki.ca, None).await, Ok(200));
    // The `listening` line has the same shape with TLS; plain text is not served.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(plain.get(server.http_url("/healthz")).send().await.is_err());
    // A client that does not trust the server's CA refuses it.
    let stranger_ca = ca_for_strangers().pem();
    assert!(check_over_tls(&server, &stranger_ca, None).await.is_err());
    assert!(healthz_over_tls(&server, &stranger_ca, None).await.is_err());
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca() {
    let pki = Pki::new();
    let server = start(&pki, true);
    // The gateway's certificate from the client CA: admitted on both listeners.
    assert_eq!(
        check_over_tls(&server, &pki.ca, Some(&pki.client)).await,
        Ok(UNAUTHENTICATED)
    );
    assert_eq!(
        healthz_over_tls(&server, &pki.ca, Some(&pki.client)).await,
        Ok(200)
    );
    // No client certificate, or one from another CA: the server ends the handshake (with a
    // `CertificateRequired` or `UnknownCA` alert, which the client may see only as a closed
    // connection), on both listeners: no request reaches a handler.
    for identity in [None, Some(&pki.stranger)] {
        let who = if identity.is_some() {
            "another CA's client"
        } else {
            "no client certificate"
        };
        let grpc = check_over_tls(&server, &pki.ca, identity).await;
        assert!(
            grpc.as_ref()
                .is_err_and(|e| e.starts_with("connect:") || e.contains("Transport")),
            "gRPC with {who}: {grpc:?}"
        );
        let http = healthz_over_tls(&server, &pki.ca, identity).await;
        assert!(http.is_err(), "HTTP with {who}: {http:?}");
    }
    // Refused clients do not disturb the server.
    assert_eq!(
        check_over_tls(&server, &pki.ca, Some(&pki.client)).await,
        Ok(UNAUTHENTICATED)
    );
}

/// Runs `portcullis serve` with these flags, expecting it to refuse to start; its stderr.
fn refused_start(flags: &[&Path], names: &[&str]) -> String {
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--policies".into(),
        support::fixtures().join("policies").display().to_string(),
        "--grpc-listen".into(),
        "127.0.0.1:0".into(),
        "--http-listen".into(),
        "127.0.0.1:0".into(),
    ];
    for (name, path) in names.iter().zip(flags) {
        args.push((*name).to_owned());
        args.push(path.display().to_string());
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "the server started with {args:?}");
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            return stderr;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server neither started nor stopped with {args:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn unusable_tls_files_stop_the_server_with_the_file_named() {
    let pki = Pki::new();
    let missing = pki.path("missing.pem");
    let stderr = refused_start(
        &[&missing, &pki.path("server.key")],
        &["--tls-cert", "--tls-key"],
    );
    assert!(stderr.contains("missing.pem"), "{stderr}");
    // A key that is not the certificate's.
    let stderr = refused_start(
        &[&pki.path("server.pem"), &pki.path("client.key")],
        &["--tls-cert", "--tls-key"],
    );
    assert!(stderr.contains("does the key belong"), "{stderr}");
    // A client CA file without a certificate.
    let stderr = refused_start(
        &[
            &pki.path("server.pem"),
            &pki.path("server.key"),
            &pki.path("server.key"),
        ],
        &["--tls-cert", "--tls-key", "--tls-client-ca"],
    );
    assert!(stderr.contains("no usable PEM certificate"), "{stderr}");
}
