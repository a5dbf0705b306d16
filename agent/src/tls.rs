//! TLS client configurations (ring provider): one that trusts nothing yet (to fetch the CA
//! for pinning), one pinned to the CA, and the mutual-TLS one used after enrollment.

use anyhow::{Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::sync::Arc;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.context("CA is not valid PEM")?)?;
    }
    anyhow::ensure!(!roots.is_empty(), "CA PEM holds no certificate");
    Ok(roots)
}

/// Trusts only `ca_pem`, no client certificate.
pub fn pinned(ca_pem: &str) -> Result<ClientConfig> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth())
}

/// Trusts only `ca_pem` and presents the agent's certificate.
pub fn mutual(ca_pem: &str, cert_pem: &str, key: PrivateKeyDer<'static>) -> Result<ClientConfig> {
    let chain = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("agent certificate is not valid PEM")?;
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(chain, key)?)
}

/// Accepts any server certificate. Used for exactly one request: fetching the CA, whose
/// hash is then compared with `--ca-hash` before anything is sent or written.
pub fn unverified_for_ca_fetch() -> Result<ClientConfig> {
    let p = provider();
    Ok(ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(p)))
        .with_no_client_auth())
}

#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// How the agent's client connects. The default is what the OS picks and no key log; the
/// fleet simulator spreads its agents over several loopback source addresses and, to time
/// requests on the wire, logs its TLS secrets. `berth-agent` never sets a key log.
#[derive(Debug, Clone, Default)]
pub struct Connect {
    pub local_address: Option<std::net::IpAddr>,
    pub key_log: Option<Arc<dyn rustls::KeyLog>>,
}

/// The agent's HTTPS client: mutual TLS with its enrolled identity, HTTP/2 when the
/// controller offers it. The poll, the reports and bundle downloads then share one
/// connection (one socket and one TLS session per host on the controller). Downloads
/// get large flow-control windows so a bundle streams at link speed.
pub fn agent_client(id: &crate::identity::Identity, connect: &Connect) -> Result<reqwest::Client> {
    let mut tls = mutual(&id.ca_pem, &id.cert_pem, id.private_key()?)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if let Some(log) = &connect.key_log {
        tls.key_log = log.clone();
    }
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .local_address(connect.local_address)
        .connect_timeout(std::time::Duration::from_secs(10))
        .read_timeout(std::time::Duration::from_secs(60))
        .http2_initial_stream_window_size(Some(4 << 20))
        .http2_initial_connection_window_size(Some(8 << 20))
        .http2_keep_alive_interval(Some(std::time::Duration::from_secs(60)))
        .http2_keep_alive_timeout(std::time::Duration::from_secs(20))
        .build()
        .context("cannot build the HTTPS client")
}
