//! A CA of a test's own and a TLS front for the sandbox: WeChat over HTTPS, as an operator's
//! network sees it.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio_rustls::rustls::{self, pki_types::PrivateKeyDer};

/// A CA (as PEM), and a server config with a certificate it signed for `name` (a host name or
/// an IP address).
pub fn ca_and_server(name: &str) -> (String, rustls::ServerConfig) {
    let (ca, leaf, key) = issued(name);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    (ca.pem(), server)
}

/// A CA and a certificate it signed for `name`, with the certificate's key.
fn issued(name: &str) -> (rcgen::Certificate, rcgen::Certificate, rcgen::KeyPair) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "wxgate test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
    (ca, leaf, key)
}

/// Terminates TLS on a port of its own and forwards each connection to `to`, in plain HTTP.
pub async fn tls_in_front_of(to: SocketAddr, server: rustls::ServerConfig) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to forward.
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut plain) = tokio::net::TcpStream::connect(to).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

/// A CA (as PEM) and a certificate it signed for `name` with its key, both as PEM: what an
/// operator puts in `listen.tls_cert` and `listen.tls_key`.
pub fn ca_and_pair(name: &str) -> (String, String, String) {
    let (ca, leaf, key) = issued(name);
    (ca.pem(), leaf.pem(), key.serialize_pem())
}
