//! The platform's signing key: read from its PEM file, or created there on first start (mode 0600).
//! It signs consent and deletion receipts and the audit log's tree heads; its public half is
//! published as a JWK set so anyone can check those signatures offline, beside the public keys that
//! will replace it (`keys.next_platform_signing_keys`) and those it replaced
//! (`keys.previous_platform_signing_keys`), so that what either signed verifies while processes
//! switch one by one and after.

use crate::config::Settings;
use anyhow::Context;
use mydata_package::{PlatformKeys, PlatformSigner, verify_platform_jws};
use mydata_store::TreeHead;
use p256::ecdsa::{SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use std::path::Path;

/// The platform's signing key and the public keys it publishes: its own first, then those that
/// will replace it, then those it replaced.
#[derive(Debug)]
pub struct PlatformKeyring {
    pub signer: PlatformSigner,
    pub published: PlatformKeys,
    /// Kids of `keys.next_platform_signing_keys`.
    pub next: Vec<String>,
    /// Kids of `keys.previous_platform_signing_keys`.
    pub previous: Vec<String>,
}

/// Loads (or creates) the signing key and reads `keys.next_platform_signing_keys` and
/// `keys.previous_platform_signing_keys`.
pub fn load_platform_keys(settings: &Settings) -> anyhow::Result<PlatformKeyring> {
    let signer = load_or_create_platform_signer(settings)?;
    let mut published = PlatformKeys::new();
    published.insert(signer.kid(), *signer.verifying_key());
    let mut listed = |setting: &str, paths: &[std::path::PathBuf]| -> anyhow::Result<Vec<String>> {
        let mut kids = Vec::new();
        for path in paths {
            let keys = read_public_keys(path)
                .with_context(|| format!("config key `keys.{setting}`: {}", path.display()))?;
            for key in keys {
                let kid = mydata_package::jwk_thumbprint(&key);
                if published.insert(kid.clone(), key) {
                    tracing::info!(kid, setting, "platform signing key published");
                    kids.push(kid);
                } else {
                    // Harmless (the current key, or a key given twice), but likely a mistake.
                    tracing::warn!(kid, setting, path = %path.display(), "platform signing key listed twice, or it is the current key");
                }
            }
        }
        Ok(kids)
    };
    let next = listed(
        "next_platform_signing_keys",
        &settings.keys.next_platform_signing_keys,
    )?;
    let previous = listed(
        "previous_platform_signing_keys",
        &settings.keys.previous_platform_signing_keys,
    )?;
    Ok(PlatformKeyring {
        signer,
        published,
        next,
        previous,
    })
}

/// A key that the processes sharing a database must hold alike but may switch one at a time: its
/// name in `key_checks` and in the settings (`keys.NAME`, listed in `keys.next_NAMEs` and
/// `keys.previous_NAMEs`), and the check values of this process's key and of those it lists.
#[derive(Debug, Clone, Copy)]
pub struct Switchable<'a> {
    pub name: &'static str,
    pub mine: &'a str,
    pub next: &'a [String],
    pub previous: &'a [String],
}

impl<'a> Switchable<'a> {
    /// The platform signing key (check value: its kid).
    pub fn signing_key(ring: &'a PlatformKeyring) -> Self {
        Self {
            name: "platform_signing_key",
            mine: ring.signer.kid(),
            next: &ring.next,
            previous: &ring.previous,
        }
    }

    /// The data key.
    pub fn data_key(vault: &'a crate::vault::Vault) -> Self {
        Self {
            name: "data_key",
            mine: vault.check_value(),
            next: vault.next_checks(),
            previous: vault.previous_checks(),
        }
    }
}

/// Refuses to go on with a key other than the one the processes sharing the database use, but lets
/// them switch keys one process at a time: a process may start with the recorded key; with an
/// older key while it lists the recorded one as next (it has not been switched yet); or with a
/// newer key while it lists the recorded one as previous, and then records its own (the switch).
/// Anything else is a mistake (a key file not copied, a typo). The first process records its key.
pub async fn check_switchable(
    store: &mydata_store::Store,
    now: mydata_core::Timestamp,
    key: Switchable<'_>,
) -> anyhow::Result<()> {
    let name = key.name;
    // Bounded: a second round only after another process switched at the same moment.
    for _ in 0..3 {
        let recorded = store.key_check(key.name, key.mine, now).await?;
        if recorded == key.mine || key.next.contains(&recorded) {
            return Ok(());
        }
        if !key.previous.contains(&recorded) {
            anyhow::bail!(
                "keys.{name} is not the key the platform uses (check value {}… recorded, {}… here), nor listed in keys.next_{name}s or keys.previous_{name}s: every process sharing a database must use the same key file; to replace it, see docs/CONFIGURATION.md",
                short_check(&recorded),
                short_check(key.mine),
            );
        }
        if store
            .replace_key_check(key.name, &recorded, key.mine)
            .await?
        {
            tracing::info!(key = key.name, from = %short_check(&recorded), to = %short_check(key.mine), "the platform switched to a new key");
            return Ok(());
        }
    }
    anyhow::bail!("the recorded keys.{name} kept changing while this process started")
}

/// The start of a key's check value, enough to tell keys apart in messages and metrics.
pub fn short_check(check: &str) -> &str {
    check.get(..12).unwrap_or(check)
}

/// The P-256 public keys of a PEM public key or JWK (set) file; private keys are refused: only
/// the current key signs, so a replaced private key has no business on the server.
fn read_public_keys(path: &Path) -> anyhow::Result<Vec<VerifyingKey>> {
    const HINT: &str = "give only its public half (`openssl pkey -in OLD.pem -pubout -out OLD.pub.pem`, or the JWK set the platform published)";
    let text = std::fs::read_to_string(path).context("cannot read the file")?;
    if text.contains("PRIVATE KEY-----") {
        anyhow::bail!("holds a private key; {HINT}");
    }
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) {
        let jwks = json.get("keys").and_then(|k| k.as_array());
        let private = jwks
            .map_or(std::slice::from_ref(&json), Vec::as_slice)
            .iter()
            .any(|jwk| jwk.get("d").is_some());
        if private {
            anyhow::bail!("holds a private JWK (member `d`); {HINT}");
        }
    }
    let keys = crate::receipts::read_platform_keys(text.as_bytes()).map_err(anyhow::Error::msg)?;
    Ok(keys.into_iter().map(|k| k.key).collect())
}

/// Loads the platform signing key, creating it when the file does not exist yet.
pub fn load_or_create_platform_signer(settings: &Settings) -> anyhow::Result<PlatformSigner> {
    let path = settings.platform_key_path();
    let key = if path.exists() {
        read_key(&path)?
    } else {
        let key = <SigningKey as p256::elliptic_curve::Generate>::generate();
        if write_new_key(&path, &key)? {
            tracing::info!(path = %path.display(), "created a new platform signing key");
            key
        } else {
            // Another process starting at the same time created it first: use theirs.
            read_key(&path)?
        }
    };
    let signer =
        PlatformSigner::with_thumbprint_kid(key).context("cannot use the platform signing key")?;
    tracing::info!(kid = signer.kid(), "platform signing key loaded");
    Ok(signer)
}

/// Refuses to go on with a key other than the one the database was first used with (`keys.NAME`
/// for each `(NAME, check value)`): every process sharing a database must hold the same keys, and
/// one that created its own (no file copied to its machine) would otherwise sign, seal or name
/// people differently from the rest. The first process records each key's check value.
pub async fn check_shared(
    store: &mydata_store::Store,
    now: mydata_core::Timestamp,
    keys: &[(&str, String)],
) -> anyhow::Result<()> {
    for (name, value) in keys {
        let stored = store.key_check(name, value, now).await?;
        if stored != *value {
            anyhow::bail!(
                "keys.{name} is not the key this database was first used with (check value {}… recorded, {}… here): every process sharing a database must use the same key file; see docs/CONFIGURATION.md",
                stored.get(..8).unwrap_or_default(),
                value.get(..8).unwrap_or_default()
            );
        }
    }
    Ok(())
}

fn read_key(path: &Path) -> anyhow::Result<SigningKey> {
    warn_if_readable_by_others(path);
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the platform signing key {}", path.display()))?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a PKCS#8 PEM P-256 private key: {e}",
            path.display()
        )
    })
}

/// Writes a new key file; false when one appeared meanwhile (see [`crate::keyfile`]).
fn write_new_key(path: &Path, key: &SigningKey) -> anyhow::Result<bool> {
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("cannot encode the new key: {e}"))?;
    crate::keyfile::create_once(path, pem.as_bytes())
        .with_context(|| format!("cannot create the platform signing key {}", path.display()))
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "the platform signing key is readable by other users; chmod 600 it");
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

/// Checks a tree head's signature and that it signs exactly this head.
pub fn verify_tree_head(head: &TreeHead, key: &VerifyingKey) -> Result<(), String> {
    let sig = head.signature.as_deref().ok_or("is not signed")?;
    let payload = verify_platform_jws(sig.as_bytes(), key).map_err(|e| e.to_string())?;
    if payload != head.signing_payload() {
        return Err("signature is for a different size, root or time".into());
    }
    Ok(())
}
