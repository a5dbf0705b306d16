//! The agent's enrolled identity under `<data-dir>/identity/`: its key (0600, never leaves
//! the host), its certificate, the controller's CA and plan-signing public key.
//!
//! The directory appears in one rename, so a crash mid-join leaves either no identity or a
//! whole one. Nothing in the agent ever deletes it.

use anyhow::{bail, Context, Result};
use berth_files::{check_secret_mode, sync_dir, write_new};
use rustls_pki_types::{pem::PemObject, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityMeta {
    pub name: String,
    pub controller: String,
    pub plan_public_key: String,
    pub plan_key_id: String,
}

#[derive(Debug, Clone)]
pub struct Identity {
    pub meta: IdentityMeta,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("identity")
}

impl Identity {
    pub fn exists(data_dir: &Path) -> bool {
        dir(data_dir).join("agent.json").exists()
    }

    pub fn load(data_dir: &Path) -> Result<Identity> {
        let d = dir(data_dir);
        if !d.join("agent.json").exists() {
            bail!(
                "{} holds no identity; enroll first with `berth-agent join --controller URL --token TOKEN --ca-hash sha256:HEX --data-dir {}`",
                data_dir.display(),
                data_dir.display()
            );
        }
        let key_path = d.join("agent.key");
        check_secret_mode(&key_path)?;
        let read = |f: &str| {
            fs::read_to_string(d.join(f))
                .with_context(|| format!("cannot read {}", d.join(f).display()))
        };
        Ok(Identity {
            meta: serde_json::from_str(&read("agent.json")?).context("agent.json is corrupt")?,
            ca_pem: read("ca.crt")?,
            cert_pem: read("agent.crt")?,
            key_pem: read("agent.key")?,
        })
    }

    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .context("agent.key is not a valid PEM key")
    }

    /// The validity of the agent's certificate.
    pub fn cert_validity(&self) -> Result<berth_shared::cert::Validity> {
        berth_shared::cert::Validity::of_pem(&self.cert_pem).context("agent.crt")
    }

    /// Writes the identity into `<data-dir>/identity` atomically; there must be none yet.
    pub fn save(&self, data_dir: &Path) -> Result<()> {
        let final_dir = dir(data_dir);
        if final_dir.exists() {
            bail!("{} already exists", final_dir.display());
        }
        let tmp = self.write_staged(data_dir)?;
        fs::rename(&tmp, &final_dir)
            .with_context(|| format!("cannot move identity into {}", final_dir.display()))?;
        sync_dir(data_dir);
        Ok(())
    }

    /// Replaces the stored identity (renewal, re-enrollment) in one atomic exchange of
    /// directories: a crash leaves the old identity or the new one, never a key of one
    /// and a certificate of the other. With `expect` (a renewal), only while the stored
    /// certificate is still that one: a `join --reenroll` that replaced it meanwhile wins.
    /// Serialised between processes by `identity.lock`.
    pub fn replace(&self, data_dir: &Path, expect: Option<&str>) -> Result<()> {
        fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(data_dir.join("identity.lock"))?;
        let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow::anyhow!("cannot lock the identity: {e}"))?;
        let final_dir = dir(data_dir);
        if let Some(cert) = expect {
            let stored = fs::read_to_string(final_dir.join("agent.crt")).unwrap_or_default();
            if stored != cert {
                bail!("the identity was replaced meanwhile (re-enrolled); keeping that one");
            }
        }
        if !final_dir.exists() {
            return self.save(data_dir);
        }
        let tmp = self.write_staged(data_dir)?;
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &tmp,
            nix::fcntl::AT_FDCWD,
            &final_dir,
            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        )
        .with_context(|| format!("cannot swap the new identity into {}", final_dir.display()))?;
        sync_dir(data_dir);
        // `tmp` now holds the old identity.
        fs::remove_dir_all(&tmp)
            .with_context(|| format!("cannot remove the old identity {}", tmp.display()))?;
        Ok(())
    }

    /// Writes every file into a fresh `<data-dir>/.identity.tmp` and returns it.
    fn write_staged(&self, data_dir: &Path) -> Result<PathBuf> {
        fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        fs::set_permissions(data_dir, fs::Permissions::from_mode(0o700))?;
        let tmp = data_dir.join(".identity.tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir(&tmp)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700))?;
        write_new(&tmp.join("agent.key"), self.key_pem.as_bytes(), 0o600)?;
        write_new(&tmp.join("agent.crt"), self.cert_pem.as_bytes(), 0o644)?;
        write_new(&tmp.join("ca.crt"), self.ca_pem.as_bytes(), 0o644)?;
        write_new(
            &tmp.join("agent.json"),
            serde_json::to_string_pretty(&self.meta)?.as_bytes(),
            0o644,
        )?;
        sync_dir(&tmp);
        Ok(tmp)
    }
}
