//! The controller's own PKI: CA, server certificate, agent certificates, the plan-signing
//! key and the admin API token, all under `<data-dir>/pki` and created on first start.
//!
//! Nothing here is regenerated silently: the CA, the signing key and the admin token are
//! created once and only ever loaded afterwards. The server certificate is re-issued (and
//! logged) when the set of names it must cover changes and when it is due for renewal
//! (`server.rs`); agent certificates live `--agent-cert-ttl` and agents renew them.

mod server;
pub use server::ServerCert;

use crate::secrets::{
    check_secret_mode, create_private_dir, read_secret, write_public, write_secret,
};
use anyhow::{anyhow, bail, Context, Result};
use berth_shared::cert::{backdate, Validity};
use berth_shared::{Digest, HostName};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use rustls_pki_types::CertificateDer;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How long certificates issued by this controller live.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// Agent client certificates (`--agent-cert-ttl`).
    pub agent: Duration,
    /// The controller's server certificate (`--server-cert-ttl`).
    pub server: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            agent: Duration::from_secs(90 * 24 * 3600),
            server: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

/// The shortest lifetime accepted for either kind (tests use short ones).
pub const MIN_CERT_TTL: Duration = Duration::from_secs(30);

/// File names under `<data-dir>/pki`.
#[derive(Debug, Clone)]
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
    ca_validity: Validity,
    /// The server certificate, renewed in place while the controller serves.
    pub server: std::sync::Arc<ServerCert>,
    pub lifetimes: Lifetimes,
    pub plan_key: Ed25519KeyPair,
    pub admin_token: String,
    /// Whether this start created the CA (first start).
    pub created: bool,
}

impl Pki {
    /// Loads the PKI from `data_dir`, creating what a first start needs. `sans` are the
    /// names the server certificate must cover.
    pub fn load_or_create(
        data_dir: &Path,
        sans: &BTreeSet<String>,
        lifetimes: Lifetimes,
    ) -> Result<Pki> {
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
        let ca_validity = Validity::of_der(ca_der.as_ref()).context("ca.crt")?;
        let now = crate::time::now_unix();
        if ca_validity.expired(now) {
            bail!(
                "the CA certificate {} expired at {}; rotate the CA as described in docs/operations.md (\"Rotating the CA\")",
                paths.ca_cert().display(),
                crate::time::rfc3339(ca_validity.not_after)
            );
        }

        let plan_pkcs8 = read_secret(&paths.plan_key())?;
        let plan_key = Ed25519KeyPair::from_pkcs8(&plan_pkcs8)
            .map_err(|e| anyhow!("plan-signing.key is not a valid ed25519 key: {e}"))?;
        let admin_token = String::from_utf8(read_secret(&paths.admin_token())?)
            .context("admin.token is not UTF-8")?
            .trim()
            .to_string();

        let server = std::sync::Arc::new(ServerCert::load(
            paths,
            &ca_issuer,
            &ca_der,
            sans,
            lifetimes.server,
        )?);
        Ok(Pki {
            ca_pem,
            ca_der,
            ca_issuer,
            ca_validity,
            server,
            lifetimes,
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

    /// Re-issues the server certificate when it is due (see `ServerCert::renew_if_due`).
    pub fn renew_server_cert_if_due(&self) -> Result<bool> {
        self.server.renew_if_due(&self.ca_issuer, &self.ca_der)
    }

    /// The end of a new certificate's life: `ttl` from now, never past the CA's own end.
    fn leaf_not_after(&self, now: SystemTime, ttl: Duration) -> SystemTime {
        let ca_end =
            SystemTime::UNIX_EPOCH + Duration::from_secs(self.ca_validity.not_after as u64);
        (now + ttl).min(ca_end)
    }

    /// Signs an agent's CSR as a client certificate for `name`, valid for the agent
    /// lifetime. Only the CSR's public key is used; subject, usages and validity are the
    /// controller's.
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
        let ttl = self.lifetimes.agent;
        let not_after = self.leaf_not_after(now, ttl);
        let not_before = now - backdate(ttl);
        params.not_before = not_before.into();
        params.not_after = not_after.into();
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
            not_before: unix(not_before),
            not_after: unix(not_after),
        })
    }
}

/// A signed agent certificate.
pub struct AgentCert {
    pub pem: String,
    /// sha256 of the DER, hex: how the controller recognises the agent on every call.
    pub fingerprint: String,
    pub serial: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
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

/// The first certificate in a PEM string, as DER.
pub fn pem_to_der(pem: &str) -> Result<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .ok_or_else(|| anyhow!("no certificate in PEM"))?
        .context("invalid PEM certificate")
}

pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
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
