//! The controller's own PKI: CA, server certificate, agent certificates, the plan-signing
//! key and the admin API token, all under `<data-dir>/pki` and created on first start.
//!
//! Nothing here is regenerated silently: the CA, the signing key and the admin token are
//! created once and only ever loaded afterwards. The server certificate is re-issued (and
//! logged) when the set of names it must cover changes.

use crate::secrets::{
    check_secret_mode, create_private_dir, read_secret, write_public, write_secret,
};
use anyhow::{anyhow, bail, Context, Result};
use berth_shared::{Digest, HostName};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// File names under `<data-dir>/pki`.
pub struct PkiPaths {
    pub dir: PathBuf,
}

impl PkiPaths {
    pub fn new(data_dir: &Path) -> Self {
        PkiPaths {
            dir: data_dir.join("pki"),
        }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    pub fn server_sans(&self) -> PathBuf {
        self.dir.join("server.sans")
    }
    pub fn plan_key(&self) -> PathBuf {
        self.dir.join("plan-signing.key")
    }
    pub fn admin_token(&self) -> PathBuf {
        self.dir.join("admin.token")
    }
    /// Every file that must be 0600.
    pub fn secrets(&self) -> [PathBuf; 4] {
        [
            self.ca_key(),
            self.server_key(),
            self.plan_key(),
            self.admin_token(),
        ]
    }
}

/// The loaded PKI.
pub struct Pki {
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    ca_issuer: Issuer<'static, KeyPair>,
    pub server_chain: Vec<CertificateDer<'static>>,
    pub server_key: PrivateKeyDer<'static>,
    pub plan_key: Ed25519KeyPair,
    pub admin_token: String,
    /// Whether this start created the CA (first start).
    pub created: bool,
}

impl Pki {
    /// Loads the PKI from `data_dir`, creating what a first start needs. `sans` are the
    /// names the server certificate must cover.
    pub fn load_or_create(data_dir: &Path, sans: &BTreeSet<String>) -> Result<Pki> {
        let paths = PkiPaths::new(data_dir);
        create_private_dir(&paths.dir)?;
        let created = !paths.ca_cert().exists();
        if created {
            if paths.ca_key().exists() {
                bail!(
                    "{} exists without {}; restore the CA certificate or move the key away",
                    paths.ca_key().display(),
                    paths.ca_cert().display()
                );
            }
            create_ca(&paths)?;
            let admin = format!("berth_admin_{}", random_token(32));
            write_secret(&paths.admin_token(), admin.as_bytes())?;
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| anyhow!("cannot generate the plan-signing key"))?;
            write_secret(&paths.plan_key(), pkcs8.as_ref())?;
            tracing::info!(dir = %paths.dir.display(), "created CA, plan-signing key and admin token");
        }
        for secret in paths.secrets() {
            if secret.exists() {
                check_secret_mode(&secret)?;
            } else if secret != paths.server_key() {
                bail!(
                    "{} is missing; the controller will not recreate it silently — restore it from a backup, or start from an empty data dir",
                    secret.display()
                );
            }
        }

        let ca_pem = fs::read_to_string(paths.ca_cert())
            .with_context(|| format!("cannot read {}", paths.ca_cert().display()))?;
        let ca_key_pem =
            String::from_utf8(read_secret(&paths.ca_key())?).context("ca.key is not UTF-8 PEM")?;
        let ca_key = KeyPair::from_pem(&ca_key_pem).context("ca.key is not a valid key")?;
        let ca_issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
            .context("ca.crt is not a valid CA certificate")?;
        let ca_der = pem_to_der(&ca_pem)?;

        let plan_pkcs8 = read_secret(&paths.plan_key())?;
        let plan_key = Ed25519KeyPair::from_pkcs8(&plan_pkcs8)
            .map_err(|e| anyhow!("plan-signing.key is not a valid ed25519 key: {e}"))?;
        let admin_token = String::from_utf8(read_secret(&paths.admin_token())?)
            .context("admin.token is not UTF-8")?
            .trim()
            .to_string();

        ensure_server_cert(&paths, &ca_issuer, sans)?;
        let server_pem = fs::read_to_string(paths.server_cert())?;
        let server_key_pem = String::from_utf8(read_secret(&paths.server_key())?)?;
        let server_chain = vec![pem_to_der(&server_pem)?, ca_der.clone()];
        let server_key = KeyPair::from_pem(&server_key_pem)
            .context("server.key is not a valid key")?
            .serialize_der();
        Ok(Pki {
            ca_pem,
            ca_der,
            ca_issuer,
            server_chain,
            server_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key)),
            plan_key,
            admin_token,
            created,
        })
    }

    /// The pin agents check before trusting this controller: sha256 of the CA's DER.
    pub fn ca_hash(&self) -> Digest {
        Digest::of(self.ca_der.as_ref())
    }

    /// Hex of the ed25519 public key agents verify plans with.
    pub fn plan_public_key_hex(&self) -> String {
        hex::encode(self.plan_key.public_key().as_ref())
    }

    /// First 16 hex characters of the sha256 of the plan public key.
    pub fn plan_key_id(&self) -> String {
        Digest::of(self.plan_key.public_key().as_ref()).hex()[..16].to_string()
    }

    /// Signs an agent's CSR as a client certificate for `name`. Only the CSR's public key is
    /// used; subject, usages and validity are the controller's.
    pub fn sign_agent_csr(&self, csr_pem: &str, name: &HostName) -> Result<AgentCert, CsrError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|_| CsrError)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name.as_str());
        dn.push(DnType::OrganizationName, "berth-agent");
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let serial = random_bytes::<16>();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(300)).into();
        params.not_after = (now + LEAF_VALIDITY).into();
        let signed = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.ca_issuer)
        .map_err(|_| CsrError)?;
        Ok(AgentCert {
            fingerprint: Digest::of(signed.der()).hex(),
            serial: hex::encode(serial),
            pem: signed.pem(),
        })
    }
}

/// A signed agent certificate.
pub struct AgentCert {
    pub pem: String,
    /// sha256 of the DER, hex: how the controller recognises the agent on every call.
    pub fingerprint: String,
    pub serial: String,
}

#[derive(Debug, thiserror::Error)]
#[error("csr_pem is not a valid, self-signed PKCS#10 certificate signing request")]
pub struct CsrError;

fn create_ca(paths: &PkiPaths) -> Result<()> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("berth CA {}", random_token(6)));
    dn.push(DnType::OrganizationName, "berth");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(300)).into();
    params.not_after = (now + CA_VALIDITY).into();
    params.serial_number = Some(SerialNumber::from_slice(&random_bytes::<16>()));
    let cert = params.self_signed(&key)?;
    // Key first: a crash between the two leaves a state load_or_create reports clearly.
    write_secret(&paths.ca_key(), key.serialize_pem().as_bytes())?;
    write_public(&paths.ca_cert(), cert.pem().as_bytes())?;
    Ok(())
}

/// Issues the server certificate when missing or when the names it must cover changed.
fn ensure_server_cert(
    paths: &PkiPaths,
    ca: &Issuer<'static, KeyPair>,
    sans: &BTreeSet<String>,
) -> Result<()> {
    let wanted = sans.iter().cloned().collect::<Vec<_>>().join("\n");
    let have = fs::read_to_string(paths.server_sans()).ok();
    if paths.server_cert().exists()
        && paths.server_key().exists()
        && have.as_deref() == Some(&wanted)
    {
        return Ok(());
    }
    if have.is_some() {
        tracing::info!(sans = %wanted.replace('\n', ","), "names changed: re-issuing the server certificate (same CA)");
    }
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
    params.not_before = (now - Duration::from_secs(300)).into();
    params.not_after = (now + LEAF_VALIDITY).into();
    params.serial_number = Some(SerialNumber::from_slice(&random_bytes::<16>()));
    let cert = params.signed_by(&key, ca)?;
    write_secret(&paths.server_key(), key.serialize_pem().as_bytes())?;
    write_public(&paths.server_cert(), cert.pem().as_bytes())?;
    write_public(&paths.server_sans(), wanted.as_bytes())?;
    Ok(())
}

/// The first certificate in a PEM string, as DER.
pub fn pem_to_der(pem: &str) -> Result<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .ok_or_else(|| anyhow!("no certificate in PEM"))?
        .context("invalid PEM certificate")
}

fn random_bytes<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    // Positive serial numbers: clear the top bit.
    b[0] &= 0x7f;
    b
}

/// A random string of `[a-z0-9]`.
pub fn random_token(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rngs::OsRng;
    (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// sha256 hex of a secret, as stored in the database.
pub fn hash_secret(secret: &str) -> String {
    Digest::of(secret.as_bytes()).hex()
}
