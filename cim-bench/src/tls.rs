//! TLS for the generator's connections (`--tls`): a certificate made for the run, the server
//! started with it, and a client side that trusts it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The client side: whom to trust and the name to expect.
#[derive(Clone)]
pub struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

/// A certificate and key written for a server to read.
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Tls {
    /// Makes a self-signed certificate for `localhost` and 127.0.0.1, writes it and its key
    /// into `dir`, and trusts it.
    pub fn self_signed(dir: &Path) -> anyhow::Result<(Tls, Files)> {
        let made = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .context("making a certificate")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let files = Files {
            cert: dir.join("bench-cert.pem"),
            key: dir.join("bench-key.pem"),
        };
        std::fs::write(&files.cert, made.cert.pem())?;
        std::fs::write(&files.key, made.signing_key.serialize_pem())?;
        let tls = Tls::trusting(&files.cert, "localhost")?;
        Ok((tls, files))
    }

    /// Trusts the CA certificates of `ca` (PEM) and expects certificates for `name`.
    pub fn trusting(ca: &Path, name: &str) -> anyhow::Result<Tls> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("reading {}", ca.display()))?
        {
            roots.add(cert.with_context(|| format!("reading {}", ca.display()))?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(config)),
            name: ServerName::try_from(name.to_owned())?,
        })
    }

    /// The client side of a handshake on `stream`.
    pub async fn connect(&self, stream: TcpStream) -> anyhow::Result<TlsStream<TcpStream>> {
        Ok(self.connector.connect(self.name.clone(), stream).await?)
    }
}
