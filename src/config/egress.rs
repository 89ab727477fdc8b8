//! How the gateway reaches WeChat beyond the URLs: the forward proxy it leaves through
//! (`upstream.proxy`) and the extra CAs it trusts (`upstream.ca_file`).

use crate::Secret;
use base64::Engine;
use std::path::PathBuf;

/// An HTTP forward proxy: `http://[user:password@]host[:port]`, known to have a host.
#[derive(Clone)]
pub struct EgressProxy {
    /// The whole URL, credentials included: for the HTTP clients only.
    pub url: url::Url,
    pub host: String,
    pub port: u16,
    /// `Basic base64(user:password)` when the URL has credentials.
    pub authorization: Option<Secret>,
}

impl EgressProxy {
    /// `host:port`, for log lines: never the credentials.
    pub fn describe(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The URL with its password replaced by `...`, for `wxgate check`.
    pub fn masked(&self) -> String {
        let mut url = self.url.clone();
        if url.password().is_some() {
            let _ = url.set_password(Some("..."));
        }
        url.to_string()
    }
}

/// The credentials are secrets.
impl std::fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EgressProxy({})", self.describe())
    }
}

/// CA certificates read from a PEM file at start-up, each known to be usable as a trust anchor
/// (e.g. the CA of a TLS-inspecting egress proxy).
#[derive(Debug, Clone)]
pub struct CaFile {
    pub path: PathBuf,
    pub certs: Vec<pingora::tls::CertificateDer<'static>>,
}

/// `http://[user:password@]host[:port]`: the forward proxies WeChat callers use speak plain
/// HTTP to the gateway (HTTPS to WeChat goes through them in a CONNECT tunnel).
impl EgressProxy {
    pub(super) fn parse(value: &str) -> Result<EgressProxy, String> {
        let url = url::Url::parse(value)
            .map_err(|_| "must be a URL such as http://user:password@10.0.0.9:3128".to_owned())?;
        if url.scheme() != "http" {
            return Err(
                "must start with http:// (the proxy is spoken to in plain HTTP; HTTPS to WeChat is tunnelled)".into()
            );
        }
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or("must name the proxy's host")?;
        if url.path() != "/" || url.query().is_some() {
            return Err("must be only a scheme, credentials, host and port".into());
        }
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        let authorization = (!url.username().is_empty()).then(|| {
            let pair = format!("{}:{}", decode(url.username()), decode(url.password().unwrap_or("")));
            Secret::new(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair)))
        });
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        Ok(EgressProxy { port: url.port().unwrap_or(80), host, authorization, url })
    }
}

impl CaFile {
    /// A PEM file holding at least one CA certificate, and nothing else that is not one (a
    /// private key in a CA bundle is a mistake worth stopping for).
    pub(super) fn read(path: &str) -> Result<CaFile, String> {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        let mut certs = Vec::new();
        let mut roots = pingora::tls::RootCertStore::empty();
        for item in rustls_pemfile::read_all(&mut pem.as_slice()) {
            match item.map_err(|e| format!("{path} is not a valid PEM file: {e:?}"))? {
                rustls_pemfile::Item::X509Certificate(cert) => {
                    roots
                        .add(cert.clone())
                        .map_err(|e| format!("certificate {} in {path} cannot be a CA: {e}", certs.len() + 1))?;
                    certs.push(cert);
                }
                _ => return Err(format!("{path} holds something other than certificates")),
            }
        }
        if certs.is_empty() {
            return Err(format!("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
        }
        Ok(CaFile { path: PathBuf::from(path), certs })
    }
}
