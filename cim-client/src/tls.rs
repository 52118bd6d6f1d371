//! TLS for `tls://` and `wss://` endpoints (and `https://` dispatch URLs): the server's
//! certificate is checked against the platform's root certificates, or the CA certificates of
//! [`ClientConfig::ca_file`](crate::ClientConfig::ca_file), and must be valid for the host.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Performs the client side of the handshake with `host` (a name or an IP address), trusting
/// the CA certificates of `ca_file`, or the platform's roots without one.
pub(crate) async fn connect(
    stream: TcpStream,
    host: &str,
    ca_file: Option<&Path>,
) -> Result<TlsStream<TcpStream>, String> {
    let config = match ca_file {
        Some(file) => with_roots(ca_roots(file)?),
        None => platform_config()?,
    };
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host:?} cannot be a TLS server name: {e}"))?;
    TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))
}

fn with_roots(roots: RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // The provider's defaults are the safe protocol versions; a failure here would be a bug in
    // the provider, so fall back to rustls's process default.
    let config = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(builder) => builder.with_root_certificates(roots).with_no_client_auth(),
        Err(_) => rustls::ClientConfig::builder()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth(),
    };
    Arc::new(config)
}

/// The CA certificates of a PEM file.
fn ca_roots(file: &Path) -> Result<RootCertStore, String> {
    let failed = |e: &dyn std::fmt::Display| format!("CA file {}: {e}", file.display());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(file).map_err(|e| failed(&e))? {
        roots
            .add(cert.map_err(|e| failed(&e))?)
            .map_err(|e| failed(&e))?;
    }
    if roots.is_empty() {
        return Err(failed(&"no CERTIFICATE in it"));
    }
    Ok(roots)
}

/// The configuration trusting the platform's roots, read once per process.
fn platform_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none installed".to_owned(), ToString::to_string);
                return Err(format!(
                    "no platform root certificates ({why}); give a CA file"
                ));
            }
            Ok(with_roots(roots))
        })
        .clone()
}
