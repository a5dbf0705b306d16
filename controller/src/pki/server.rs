//! The controller's server certificate: issued from the CA for the names the controller
//! answers to, served through a resolver so a renewal takes effect on the next handshake
//! without a restart, and renewed at two thirds of its lifetime — at start when it is due
//! (a controller that was down for long starts with a fresh one) and while serving.

use super::{random_bytes, PkiPaths};
use crate::secrets::{read_secret, write_public, write_secret};
use anyhow::{anyhow, Context, Result};
use berth_shared::cert::{backdate, Validity};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::crypto::ring::sign::any_supported_type;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::BTreeSet;
use std::fs;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// The server certificate in use, swappable while serving.
#[derive(Debug)]
pub struct ServerCert {
    paths: PkiPaths,
    sans: BTreeSet<String>,
    ttl: Duration,
    current: RwLock<Current>,
}

#[derive(Debug, Clone)]
struct Current {
    key: Arc<CertifiedKey>,
    validity: Validity,
}

impl ServerCert {
    /// Loads `server.crt`/`server.key`, issuing a new pair first when they are missing,
    /// cover other names than `sans`, or are due for renewal.
    pub(super) fn load(
        paths: PkiPaths,
        ca: &Issuer<'static, KeyPair>,
        ca_der: &CertificateDer<'static>,
        sans: &BTreeSet<String>,
        ttl: Duration,
    ) -> Result<ServerCert> {
        let wanted = sans_text(sans);
        let have = fs::read_to_string(paths.server_sans()).ok();
        let on_disk = if paths.server_cert().exists() && paths.server_key().exists() {
            match load_pair(&paths, ca_der) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "stored server certificate unusable: issuing a new one (same CA)"
                    );
                    None
                }
            }
        } else {
            None
        };
        let now = crate::time::now_unix();
        let current = match on_disk {
            Some(c) if have.as_deref() == Some(&wanted) && c.validity.renew_at() > now => c,
            Some(c) => {
                if have.as_deref() != Some(&wanted) {
                    tracing::info!(sans = %wanted.replace('\n', ","), "names changed: re-issuing the server certificate (same CA)");
                } else {
                    tracing::info!(not_after = %crate::time::rfc3339(c.validity.not_after), "server certificate due for renewal: re-issuing it (same CA)");
                }
                issue(&paths, ca, ca_der, sans, ttl)?
            }
            None => issue(&paths, ca, ca_der, sans, ttl)?,
        };
        Ok(ServerCert {
            paths,
            sans: sans.clone(),
            ttl,
            current: RwLock::new(current),
        })
    }

    /// When the certificate in use expires, unix seconds.
    pub fn not_after(&self) -> i64 {
        self.read().validity.not_after
    }

    /// How long until the certificate in use is due for renewal.
    pub fn until_renewal(&self) -> Duration {
        self.read().validity.until_renewal(crate::time::now_unix())
    }

    /// Issues, stores and starts serving a new certificate when the one in use is due.
    pub(super) fn renew_if_due(
        &self,
        ca: &Issuer<'static, KeyPair>,
        ca_der: &CertificateDer<'static>,
    ) -> Result<bool> {
        if self.read().validity.renew_at() > crate::time::now_unix() {
            return Ok(false);
        }
        let next = issue(&self.paths, ca, ca_der, &self.sans, self.ttl)?;
        tracing::info!(not_after = %crate::time::rfc3339(next.validity.not_after), "server certificate renewed");
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(true)
    }

    fn read(&self) -> Current {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.read().key)
    }
}

fn sans_text(sans: &BTreeSet<String>) -> String {
    sans.iter().cloned().collect::<Vec<_>>().join("\n")
}

/// Reads the stored pair into a servable key.
fn load_pair(paths: &PkiPaths, ca_der: &CertificateDer<'static>) -> Result<Current> {
    let cert_pem = fs::read_to_string(paths.server_cert())
        .with_context(|| format!("cannot read {}", paths.server_cert().display()))?;
    let key_pem = String::from_utf8(read_secret(&paths.server_key())?)
        .context("server.key is not UTF-8 PEM")?;
    let key = KeyPair::from_pem(&key_pem).context("server.key is not a valid key")?;
    certified(&cert_pem, &key, ca_der)
}

fn certified(cert_pem: &str, key: &KeyPair, ca_der: &CertificateDer<'static>) -> Result<Current> {
    let leaf = super::pem_to_der(cert_pem)?;
    let validity = Validity::of_der(leaf.as_ref()).context("server.crt")?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = any_supported_type(&der).map_err(|e| anyhow!("server.key: {e}"))?;
    let key = CertifiedKey::new(vec![leaf, ca_der.clone()], signing);
    // A crash between writing the new key and the new certificate leaves a pair that
    // does not match; `load` then issues a fresh one.
    key.keys_match()
        .map_err(|e| anyhow!("server.key does not belong to server.crt: {e}"))?;
    Ok(Current {
        key: Arc::new(key),
        validity,
    })
}

/// Issues a server certificate for `sans`, valid for `ttl`, and stores it (key first).
fn issue(
    paths: &PkiPaths,
    ca: &Issuer<'static, KeyPair>,
    ca_der: &CertificateDer<'static>,
    sans: &BTreeSet<String>,
    ttl: Duration,
) -> Result<Current> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "berth controller");
    params.distinguished_name = dn;
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => {
                Ok(SanType::DnsName(s.clone().try_into().map_err(|_| {
                    anyhow!("`{s}` is not a valid DNS name for --san")
                })?))
            }
        })
        .collect::<Result<_>>()?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let now = SystemTime::now();
    params.not_before = (now - backdate(ttl)).into();
    params.not_after = (now + ttl).into();
    params.serial_number = Some(SerialNumber::from_slice(&random_bytes::<16>()));
    let cert = params.signed_by(&key, ca)?;
    let current = certified(&cert.pem(), &key, ca_der)?;
    write_secret(&paths.server_key(), key.serialize_pem().as_bytes())?;
    write_public(&paths.server_cert(), cert.pem().as_bytes())?;
    write_public(&paths.server_sans(), sans_text(sans).as_bytes())?;
    Ok(current)
}
