//! TLS for the long-connection listeners.
//!
//! [`TlsConfig`] holds a listener's certificate chain and key, read from PEM files, behind a
//! resolver whose certificate can be swapped ([`TlsConfig::reload`]): a handshake after a
//! reload presents the new certificate, and connections made before it keep their session.
//! [`TlsStream`] is the server side of a connection, over rustls's unbuffered connection: the
//! ciphertext buffers belong to the stream and are released whenever they are empty, so an idle
//! connection holds rustls's own state and no buffer.

mod stream;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use stream::{TlsStream, accept};

use crate::ServerError;

/// Which of a listener's two PEM files a [`ServerError::Certificate`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PemFile {
    /// The certificate chain (`tls.cert`).
    Cert,
    /// The private key (`tls.key`).
    Key,
}

impl fmt::Display for PemFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PemFile::Cert => "certificate chain",
            PemFile::Key => "private key",
        })
    }
}

/// The cryptography in use: rustls's *ring* provider. It builds quickly with a C compiler
/// alone, where aws-lc-rs compiles a much larger C library (with cmake on some targets); its
/// AES-GCM keys take no more memory per connection, and the SDK uses it too.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A listener's TLS settings: its certificate, reloadable, and the rustls configuration that
/// presents it. Cloning shares both.
#[derive(Clone)]
pub struct TlsConfig {
    config: Arc<rustls::ServerConfig>,
    cert: Arc<ReloadableCert>,
}

impl TlsConfig {
    /// Reads the certificate chain (PEM, the end-entity certificate first) from `cert` and its
    /// private key (PEM: PKCS#8, PKCS#1 or SEC1) from `key`. The error names the file that is
    /// missing, unreadable, empty of what it should hold, or whose key does not match.
    pub fn from_pem_files(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Result<TlsConfig, ServerError> {
        let provider = provider();
        let cert = ReloadableCert::load(cert.into(), key.into(), &provider)?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| ServerError::Config(format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&cert) as Arc<dyn ResolvesServerCert>);
        Ok(TlsConfig {
            config: Arc::new(config),
            cert,
        })
    }

    /// Reads the files again and, if they hold a usable certificate and key, presents them from
    /// the next handshake on. On an error the certificate in use stays.
    pub fn reload(&self) -> Result<(), ServerError> {
        let fresh = load_pair(&self.cert.cert_path, &self.cert.key_path, &provider())?;
        *self
            .cert
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    /// The certificate chain's file.
    pub fn cert_path(&self) -> &Path {
        &self.cert.cert_path
    }

    /// The private key's file.
    pub fn key_path(&self) -> &Path {
        &self.cert.key_path
    }

    pub(crate) fn server_config(&self) -> &Arc<rustls::ServerConfig> {
        &self.config
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("cert", &self.cert.cert_path)
            .field("key", &self.cert.key_path)
            .finish_non_exhaustive()
    }
}

/// The certificate every handshake is answered with, swapped by a reload.
struct ReloadableCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    fn load(
        cert_path: PathBuf,
        key_path: PathBuf,
        provider: &CryptoProvider,
    ) -> Result<Arc<ReloadableCert>, ServerError> {
        let current = RwLock::new(Arc::new(load_pair(&cert_path, &key_path, provider)?));
        Ok(Arc::new(ReloadableCert {
            cert_path,
            key_path,
            current,
        }))
    }
}

impl fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadableCert")
            .field("cert", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Some(Arc::clone(&current))
    }
}

fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, ServerError> {
    let failed = |file: PemFile, path: &Path, reason: String| ServerError::Certificate {
        file,
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| failed(PemFile::Cert, cert_path, pem_reason(e)))?;
    if chain.is_empty() {
        return Err(failed(
            PemFile::Cert,
            cert_path,
            "no CERTIFICATE section in it".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| failed(PemFile::Key, key_path, pem_reason(e)))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        let reason = match e {
            rustls::Error::InconsistentKeys(_) => {
                format!("does not match the certificate in {}", cert_path.display())
            }
            other => format!("not a usable private key: {other}"),
        };
        failed(PemFile::Key, key_path, reason)
    })
}

fn pem_reason(e: rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::Io(e) => format!("cannot read it: {e}"),
        Error::NoItemsFound => "no PEM section of the expected kind in it".into(),
        other => format!("not valid PEM: {other}"),
    }
}
