//! The key-encryption key (KEK): every private key the broker stores is
//! sealed under it with AES-256-GCM, so a copied database is useless alone.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use super::KeyError;

/// Format byte of sealed blobs, so the layout can change later.
const SEAL_VERSION: u8 = 1;

/// The key-encryption key.
pub struct Kek {
    key: LessSafeKey,
    rng: SystemRandom,
    /// Key of the audit log's hash chain, derived from the KEK so that
    /// whoever can write the database but lacks the KEK cannot re-chain it.
    audit_chain: ring::hmac::Key,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    /// Loads the KEK from `configured` if given (it must exist), otherwise
    /// from `DATA_DIR/kek`, generating that file (0600) on first start.
    pub fn load_or_generate(configured: Option<&Path>, data_dir: &Path) -> Result<Self, KeyError> {
        match configured {
            Some(path) => Self::from_file(path),
            None => {
                let path = data_dir.join("kek");
                if path.exists() {
                    return Self::from_file(&path);
                }
                tracing::warn!(
                    path = %path.display(),
                    "no kek_file configured: generated a key-encryption key next to the data; \
                     keep it elsewhere in production (kek_file or CREDBROKER_KEK_FILE)"
                );
                Self::generate_file(&path)
            }
        }
    }

    /// Reads a base64 (or 64-hex-digit) 32-byte key.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::Kek {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
        let text = text.trim();
        let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|e| e.to_string())
        } else {
            STANDARD.decode(text).map_err(|e| e.to_string())
        }
        .map_err(|why| KeyError::Kek {
            path: path.to_owned(),
            why: format!("not base64 or hex: {why}"),
        })?;
        Self::from_bytes(&bytes).map_err(|_| KeyError::Kek {
            path: path.to_owned(),
            why: format!("must hold 32 bytes, holds {}", bytes.len()),
        })
    }

    /// Builds a KEK from 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| KeyError::Kek {
            path: PathBuf::new(),
            why: "must hold 32 bytes".into(),
        })?;
        let derive = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes);
        let chain_key = ring::hmac::sign(&derive, b"credbroker/audit-chain/v1");
        Ok(Self {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
            audit_chain: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, chain_key.as_ref()),
        })
    }

    fn generate_file(path: &Path) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let mut bytes = [0u8; 32];
        rng.fill(&mut bytes).map_err(|_| KeyError::Random)?;
        write_private_file(path, STANDARD.encode(bytes).as_bytes()).map_err(|e| KeyError::Kek {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
        Self::from_bytes(&bytes)
    }

    /// The key of the audit log's hash chain (HMAC-SHA256), derived from
    /// the KEK.
    pub fn audit_chain_key(&self) -> ring::hmac::Key {
        self.audit_chain.clone()
    }

    /// Encrypts `plaintext`; `label` is bound as associated data, so a blob
    /// sealed for one purpose cannot be swapped in for another.
    pub fn seal(&self, label: &str, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| KeyError::Random)?;
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(label.as_bytes()),
                &mut buf,
            )
            .map_err(|_| KeyError::Seal)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Decrypts a blob made by [`Kek::seal`] with the same `label`.
    pub fn open(&self, label: &str, sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != SEAL_VERSION {
            return Err(KeyError::Unseal(label.to_owned()));
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN])
            .map_err(|_| KeyError::Unseal(label.to_owned()))?;
        let mut buf = sealed[1 + NONCE_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(label.as_bytes()), &mut buf)
            .map_err(|_| KeyError::Unseal(label.to_owned()))?;
        Ok(plain.to_vec())
    }
}

/// Writes a file readable only by its owner, atomically (temp file + rename).
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("key")
    ));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_label_binding() {
        let kek = Kek::from_bytes(&[7u8; 32]).unwrap();
        let sealed = kek.seal("dev/x509-ca", b"secret").unwrap();
        assert_eq!(kek.open("dev/x509-ca", &sealed).unwrap(), b"secret");
        assert!(kek.open("prod/x509-ca", &sealed).is_err());
        let other = Kek::from_bytes(&[8u8; 32]).unwrap();
        assert!(other.open("dev/x509-ca", &sealed).is_err());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(kek.open("dev/x509-ca", &tampered).is_err());
    }

    #[test]
    fn generated_file_is_private_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let a = Kek::load_or_generate(None, dir.path()).unwrap();
        let sealed = a.seal("l", b"x").unwrap();
        let b = Kek::load_or_generate(None, dir.path()).unwrap();
        assert_eq!(b.open("l", &sealed).unwrap(), b"x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("kek"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(Kek::load_or_generate(Some(&dir.path().join("missing")), dir.path()).is_err());
    }
}
