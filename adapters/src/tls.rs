//! TLS (feature `tls`): `wss://` served by the server itself, with rustls, and the client's trust in a
//! private CA ([`client_config_trusting`]).
//!
//! [`ServerTls::from_pem_files`] reads a certificate chain and its private key from PEM files. The
//! files are watched, not read once: on a handshake at least [`RELOAD_CHECK`] after the last look,
//! their modification times are compared and, when one changed, both are read again. New
//! connections get the new certificate; established ones keep their session (nothing is dropped).
//! A renewed pair that does not load (half written, mismatched) is logged and the previous one
//! stays in use, so a renewal never takes the endpoint down.
//!
//! With [`ServerTls::require_client_certificates`], clients must present a certificate issued by the
//! given CA (mutual TLS) before anything else happens; the bearer token is still checked after it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_rustls::TlsAcceptor;
use futures_rustls::rustls::crypto::{self, CryptoProvider};
use futures_rustls::rustls::pki_types::pem::PemObject;
use futures_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use futures_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use futures_rustls::rustls::sign::CertifiedKey;
use futures_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use crate::reloading::RELOAD_CHECK;
use crate::reloading::Reloading;
use crate::runtime::BoxedStream;

/// Why TLS could not be set up. The texts name the file, for the operator starting the server.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file holds no certificate, or no private key.
    #[error("{path} holds no {what} in PEM form")]
    Empty {
        /// The file.
        path: PathBuf,
        /// `certificate` or `private key`.
        what: &'static str,
    },
    /// rustls refused the key, the certificate chain or the client CA.
    #[error("invalid TLS configuration: {0}")]
    Invalid(String),
}

/// The server's TLS settings; cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// TLS with the certificate chain in `cert` and its private key in `key` (PEM), reloaded when
    /// they change; no client certificates asked for.
    pub fn from_pem_files(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Result<Self, TlsError> {
        Self::build(cert.into(), key.into(), None)
    }

    /// Like [`from_pem_files`](Self::from_pem_files), and clients must present a certificate issued by
    /// one of the CA certificates in `client_ca` (PEM).
    pub fn require_client_certificates(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        client_ca: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        Self::build(cert.into(), key.into(), Some(client_ca.as_ref()))
    }

    fn build(cert: PathBuf, key: PathBuf, client_ca: Option<&Path>) -> Result<Self, TlsError> {
        let provider = Arc::new(crypto::aws_lc_rs::default_provider());
        let resolver = Arc::new(ReloadingCertificate::load(cert, key, provider.clone())?);
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Invalid(e.to_string()))?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(path)?), provider)
                        .build()
                        .map_err(|e| TlsError::Invalid(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self { acceptor: TlsAcceptor::from(Arc::new(config)) })
    }

    /// Runs the server side of the TLS handshake over `stream`.
    pub async fn accept(&self, stream: BoxedStream) -> io::Result<BoxedStream> {
        Ok(Box::new(self.acceptor.accept(stream).await?))
    }
}

/// A client configuration that trusts the CA certificates in `ca` (PEM) instead of the Mozilla roots,
/// for [`ClientBuilder::tls_config`](crate::ClientBuilder::tls_config) (a private CA, a test setup).
pub fn client_config_trusting(ca: impl AsRef<Path>) -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(Arc::new(crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .with_root_certificates(root_store(ca.as_ref())?)
        .with_no_client_auth())
}

/// The CA certificates in `path` (PEM) as trust anchors.
fn root_store(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(path)? {
        roots.add(certificate).map_err(|e| TlsError::Invalid(e.to_string()))?;
    }
    Ok(roots)
}

/// The certificate handed to every handshake, read again when its files change.
struct ReloadingCertificate(Reloading<CertifiedKey, TlsError>);

impl ReloadingCertificate {
    fn load(cert: PathBuf, key: PathBuf, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let paths = vec![cert.clone(), key.clone()];
        Reloading::new("TLS certificate", paths, move || certified_key(&cert, &key, &provider)).map(Self)
    }
}

impl std::fmt::Debug for ReloadingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })?;
    let certificates: Vec<_> = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok).collect();
    if certificates.is_empty() {
        return Err(TlsError::Empty { path: path.to_owned(), what: "certificate" });
    }
    Ok(certificates)
}

fn certified_key(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = read_certificates(cert)?;
    let pem = fs::read(key).map_err(|source| TlsError::Read { path: key.to_owned(), source })?;
    let key_der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|_| TlsError::Empty { path: key.to_owned(), what: "private key" })?;
    let certified =
        CertifiedKey::from_der(chain, key_der, provider).map_err(|e| TlsError::Invalid(e.to_string()))?;
    Ok(certified)
}
