//! `wss://` end to end with a private CA: the server's certificate and its reload without a restart,
//! the client's custom roots and client certificate (mutual TLS), and the refusals around them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use streamkit::client::RetryPolicy;
use streamkit::runtime::{Runtime, TokioRuntime};
use streamkit::rustls::crypto::aws_lc_rs;
use streamkit::rustls::pki_types::pem::PemObject;
use streamkit::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use streamkit::rustls::{ClientConfig, RootCertStore};
use streamkit::server::{RunningServer, ServerConfig, start};
use streamkit::tls::{RELOAD_CHECK, ServerTls};
use streamkit::{Client, ErrorKind, Metadata, Uuid};

use crate::support::{admin_token, any_port, verifier};

/// A certificate authority of the test.
struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Authority {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Self { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    /// A certificate for `names` and its key, PEM.
    fn issue(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|name| name.to_string()).collect::<Vec<_>>()).unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        (certificate.pem(), key.serialize_pem())
    }

    /// Root certificates holding this authority only.
    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        roots
    }

    /// A client configuration trusting this authority only.
    fn client_config(&self) -> ClientConfig {
        ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots())
            .with_no_client_auth()
    }
}

fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

async fn serve_tls(runtime: &Arc<dyn Runtime>, tls: ServerTls) -> RunningServer {
    let mut config = ServerConfig::memory(any_port(), verifier());
    config.http.tls = Some(tls);
    start(runtime.clone(), config).await.unwrap()
}

/// The server's URL under the name its certificate carries.
fn wss_url(server: &RunningServer) -> String {
    assert!(server.url().starts_with("wss://"), "{}", server.url());
    format!("wss://localhost:{}", server.local_addr().port())
}

async fn client(url: &str, tls: ClientConfig) -> Result<Client, streamkit::Error> {
    Client::builder()
        .token(admin_token())
        .tls_config(Arc::new(tls))
        .retry(RetryPolicy { attempts: 1, ..Default::default() })
        .connect(url)
        .await
}

async fn round_trip(client: &Client) {
    let store = Uuid::new_v4();
    let status = client.publish(store, "tls", "segment", "over TLS", Metadata::new()).await.unwrap();
    assert_eq!(status.last_sequence, 1);
    assert_eq!(
        client.peek(store, "tls", "segment").await.unwrap().payload.as_deref(),
        Some(&b"over TLS"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_serves_wss_and_a_renewed_certificate_is_picked_up_without_a_restart() {
    let runtime: Arc<dyn Runtime> = Arc::new(TokioRuntime::try_current().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let first = Authority::new("first CA");
    let (cert_pem, key_pem) = first.issue(&["localhost"]);
    let (cert, key) = (write(dir.path(), "cert.pem", &cert_pem), write(dir.path(), "key.pem", &key_pem));
    let server = serve_tls(&runtime, ServerTls::from_pem_files(&cert, &key).unwrap()).await;
    let url = wss_url(&server);

    let trusting_first = client(&url, first.client_config()).await.unwrap();
    round_trip(&trusting_first).await;

    // Not trusted: the Mozilla roots do not know the private CA; a plain ws:// dial gets no WebSocket.
    let refused = Client::builder()
        .token(admin_token())
        .retry(RetryPolicy { attempts: 1, ..Default::default() })
        .connect(&url)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("certificate"), "{refused}");
    assert!(std::error::Error::source(&refused).is_some(), "the TLS failure is the source");
    let plain = format!("ws://localhost:{}", server.local_addr().port());
    let error = Client::builder()
        .token(admin_token())
        .retry(RetryPolicy { attempts: 1, ..Default::default() })
        .connect(plain)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidConfig, "not retried: {error}");
    assert!(
        error.to_string().contains("the server did not answer in HTTP (a TLS port? dial wss://)"),
        "{error}"
    );

    // Renewal under another CA, written over the same files.
    let second = Authority::new("second CA");
    let (cert_pem, key_pem) = second.issue(&["localhost"]);
    tokio::time::sleep(RELOAD_CHECK + Duration::from_millis(100)).await;
    write(dir.path(), "cert.pem", &cert_pem);
    write(dir.path(), "key.pem", &key_pem);
    let trusting_second = client(&url, second.client_config()).await.unwrap();
    round_trip(&trusting_second).await;
    let error = client(&url, first.client_config()).await.unwrap_err();
    assert!(error.to_string().contains("certificate"), "new connections get the new certificate: {error}");
    // The connection made under the first certificate is still up.
    round_trip(&trusting_first).await;
    assert_eq!(server.connection_count(), 2);

    // A broken renewal (a key that does not match) leaves the working certificate in place.
    tokio::time::sleep(RELOAD_CHECK + Duration::from_millis(100)).await;
    write(dir.path(), "key.pem", &first.issue(&["localhost"]).1);
    round_trip(&client(&url, second.client_config()).await.unwrap()).await;

    trusting_first.close().await;
    trusting_second.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_of_the_configured_ca() {
    let runtime: Arc<dyn Runtime> = Arc::new(TokioRuntime::try_current().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let servers = Authority::new("server CA");
    let clients = Authority::new("client CA");
    let (cert_pem, key_pem) = servers.issue(&["localhost"]);
    let cert = write(dir.path(), "cert.pem", &cert_pem);
    let key = write(dir.path(), "key.pem", &key_pem);
    let client_ca = write(dir.path(), "clients.pem", &clients.issuer.pem());
    let server =
        serve_tls(&runtime, ServerTls::require_client_certificates(&cert, &key, &client_ca).unwrap()).await;
    let url = wss_url(&server);

    // Without a certificate the handshake fails (TLS 1.3 reports it when the client first reads).
    let error = client(&url, servers.client_config()).await.unwrap_err();
    assert!(matches!(error.kind(), ErrorKind::Connection | ErrorKind::InvalidConfig), "{error}");

    let with_certificate = |authority: &Authority| {
        let (cert_pem, key_pem) = authority.issue(&["service-a"]);
        let chain = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(servers.roots())
            .with_client_auth_cert(chain, key)
            .unwrap()
    };
    let error = client(&url, with_certificate(&servers)).await.unwrap_err();
    assert!(
        matches!(error.kind(), ErrorKind::Connection | ErrorKind::InvalidConfig),
        "a certificate of another CA: {error}"
    );
    let accepted = client(&url, with_certificate(&clients)).await.unwrap();
    round_trip(&accepted).await;
    accepted.close().await;
    server.shutdown().await;
}

#[test]
fn unreadable_or_empty_files_are_reported_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let error = ServerTls::from_pem_files(&missing, &missing).unwrap_err();
    assert!(error.to_string().contains("missing.pem"), "{error}");
    let empty = write(dir.path(), "empty.pem", "");
    let error = ServerTls::from_pem_files(&empty, &empty).unwrap_err();
    assert_eq!(error.to_string(), format!("{} holds no certificate in PEM form", empty.display()));
}

/// `streamkit serve --tls-cert --tls-key` and the client commands' `--tls-ca`, as an operator runs them.
#[cfg(feature = "cli")]
#[test]
fn the_cli_serves_and_dials_wss_with_a_private_ca() {
    use crate::client_cli::{Server, admin_token_of, client_env, run};

    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new("operator CA");
    let (cert_pem, key_pem) = authority.issue(&["localhost"]);
    let cert = write(dir.path(), "cert.pem", &cert_pem);
    let key = write(dir.path(), "key.pem", &key_pem);
    let ca = write(dir.path(), "ca.pem", &authority.issuer.pem());
    let secret = "cli tls secret";
    let tls_args = ["--tls-cert".as_ref(), cert.as_os_str(), "--tls-key".as_ref(), key.as_os_str()];
    let mut server = Server::start_with(Some(secret), &dir.path().join("data"), &tls_args);
    let url = format!("wss://localhost:{}", server.wait_address().0.port());
    let (token, store) = (admin_token_of(secret), Uuid::new_v4().to_string());
    let env = client_env(&url, &token, &store);
    let ca = ca.to_str().unwrap();
    run(&env, &["produce", "--space", "sp", "--segment", "sg", "--tls-ca", ca], "one\ntwo\n");
    let consumed = run(&env, &["consume", "--space", "sp", "--segment", "sg", "--tls-ca", ca], "");
    assert_eq!(consumed, "sp/sg:1\tone\nsp/sg:2\ttwo\n");
    assert!(server.terminate().success());
}
