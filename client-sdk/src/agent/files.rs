//! The agent's output directory. Every file is replaced atomically (write a
//! temporary file in the same directory, fsync, rename), so a reader sees
//! either the old or the new credential, never half of one.
//!
//! The temporary file has an unpredictable name and is created exclusively
//! (`O_CREAT|O_EXCL`, which also refuses a symlink planted at that name), so
//! a user who can write the output directory can neither own the file the
//! key is written to nor redirect it elsewhere; the rename replaces a link
//! at the final name instead of following it.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::svid::{JwtSvid, TrustBundle, X509Svid};

/// File mode of private material (keys and tokens).
const PRIVATE: u32 = 0o600;
/// File mode of public material (certificates).
const PUBLIC: u32 = 0o644;

/// Writes `contents` to `path` atomically with `mode`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("credential");
    let mut nonce = [0u8; 12];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| std::io::Error::other("no randomness for a temporary file name"))?;
    let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = dir.join(format!(".{name}.{nonce}.tmp"));
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
        let mut file = options.open(&tmp)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    #[cfg(not(unix))]
    let _ = mode;
    result
}

/// The file name for an audience's token: characters outside
/// `A-Z a-z 0-9 . _ -` become `_`, so `https://api.example.org` is stored as
/// `jwt/https___api.example.org.token`.
pub fn audience_file_name(audience: &str) -> String {
    let safe: String = audience
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe = if safe.starts_with('.') {
        format!("_{safe}")
    } else {
        safe
    };
    format!("{safe}.token")
}

/// Where the agent writes.
#[derive(Debug, Clone)]
pub struct OutputDir {
    root: PathBuf,
}

impl OutputDir {
    /// Output under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `svid.pem`.
    pub fn svid_path(&self) -> PathBuf {
        self.root.join("svid.pem")
    }

    /// `svid_key.pem`.
    pub fn key_path(&self) -> PathBuf {
        self.root.join("svid_key.pem")
    }

    /// `bundle.pem`.
    pub fn bundle_path(&self) -> PathBuf {
        self.root.join("bundle.pem")
    }

    /// `jwt/<audience>.token`.
    pub fn jwt_path(&self, audience: &str) -> PathBuf {
        self.root.join("jwt").join(audience_file_name(audience))
    }

    /// Writes the key first, then the certificate, so a reader that sees a
    /// new certificate always finds its key.
    pub fn write_svid(&self, svid: &X509Svid, bundle: &TrustBundle) -> std::io::Result<()> {
        write_atomic(&self.key_path(), svid.private_key_pem().as_bytes(), PRIVATE)?;
        write_atomic(&self.svid_path(), svid.cert_chain_pem().as_bytes(), PUBLIC)?;
        write_atomic(&self.bundle_path(), bundle.to_pem().as_bytes(), PUBLIC)
    }

    /// Removes the SVID, its key and every JWT (the bundle stays): what the
    /// agent does when its credentials are revoked.
    pub fn remove_credentials(&self) -> std::io::Result<()> {
        for path in [self.svid_path(), self.key_path()] {
            remove_if_present(&path)?;
        }
        if let Ok(entries) = std::fs::read_dir(self.root.join("jwt")) {
            for entry in entries.flatten() {
                remove_if_present(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Removes the JWT files of `jwt`'s audiences.
    pub fn remove_jwt(&self, jwt: &JwtSvid) -> std::io::Result<()> {
        for audience in &jwt.audiences {
            remove_if_present(&self.jwt_path(audience))?;
        }
        Ok(())
    }

    /// Writes one JWT under each of its audiences.
    pub fn write_jwt(&self, jwt: &JwtSvid) -> std::io::Result<()> {
        for audience in &jwt.audiences {
            write_atomic(&self.jwt_path(audience), jwt.token.as_bytes(), PRIVATE)?;
        }
        Ok(())
    }
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audience_names_are_safe() {
        assert_eq!(audience_file_name("billing"), "billing.token");
        assert_eq!(
            audience_file_name("https://api.example.org/v1"),
            "https___api.example.org_v1.token"
        );
        assert_eq!(audience_file_name("../etc"), "_.._etc.token");
    }

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x/key.pem");
        write_atomic(&path, b"one", PRIVATE).unwrap();
        write_atomic(&path, b"two", PRIVATE).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(leftovers, 1);
    }

    #[test]
    fn links_planted_in_the_output_directory_redirect_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"untouched").unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        // Another user who can write `out` plants links at the final name
        // and at the temporary name a predictable scheme would use.
        let key = out.join("svid_key.pem");
        std::os::unix::fs::symlink(&victim, &key).unwrap();
        std::os::unix::fs::symlink(
            &victim,
            out.join(format!(".svid_key.pem.{}.tmp", std::process::id())),
        )
        .unwrap();
        write_atomic(&key, b"secret key", PRIVATE).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        let meta = std::fs::symlink_metadata(&key).unwrap();
        assert!(
            meta.file_type().is_file(),
            "the link was replaced, not followed"
        );
        assert_eq!(std::fs::read(&key).unwrap(), b"secret key");
    }
}
