//! HTTPS on the proxy listener (`listen.tls_cert`, `listen.tls_key`): the pair is read and
//! checked here, at start-up and at each reload, so that a bad one is refused by name and never
//! reaches a handshake.

use pingora::tls::sign::CertifiedKey;
use pingora::tls::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;
use std::sync::Arc;

/// A certificate chain and the key that matches its first certificate.
#[derive(Clone)]
pub struct ListenerTls {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub key: Arc<CertifiedKey>,
}

/// The key is a secret.
impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ListenerTls({}, {})", self.cert_path.display(), self.key_path.display())
    }
}

impl ListenerTls {
    /// Reads the pair; an error names the key it is about (`listen.tls_cert` or `tls_key`).
    pub(super) fn read(cert_path: &str, key_path: &str) -> Result<Self, (&'static str, String)> {
        let certs = read_certs(cert_path).map_err(|e| ("listen.tls_cert", e))?;
        let key = read_key(key_path).map_err(|e| ("listen.tls_key", e))?;
        pingora::tls::install_default_crypto_provider();
        let provider = pingora::tls::CryptoProvider::get_default()
            .ok_or(("listen.tls_key", "no TLS crypto provider".to_owned()))?;
        let key = CertifiedKey::from_der(certs, key, provider).map_err(|e| {
            ("listen.tls_key", format!("{key_path} is not the key of the certificate in {cert_path}: {e}"))
        })?;
        Ok(Self { cert_path: cert_path.into(), key_path: key_path.into(), key: Arc::new(key) })
    }
}

fn read_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{path} is not a valid PEM file: {e}"))?;
    match certs.is_empty() {
        true => Err(format!("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")),
        false => Ok(certs),
    }
}

/// The private key, never quoted in an error.
fn read_key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(format!("{path} holds no PEM private key")),
        Err(_) => Err(format!("{path} is not a valid PEM file")),
    }
}
