//! Where a client keeps its state: a home directory holding the encrypted key file
//! (`key.json`, NIP-49 inside) and the SQLite database (`client.sqlite3`).

use std::path::{Path, PathBuf};

use pigeonhole_proto::keyfile::{self, KeyFile, KeyFileError};
use pigeonhole_proto::keys::SecretKey;
use rand_core::{OsRng, RngCore as _};

use crate::error::ClientError;

/// Environment variable that sets the scrypt cost (`log_n`) of **new** key files.
///
/// Meant for tests only: the default ([`keyfile::DEFAULT_LOG_N`], 64 MiB and about 0.1 s) is
/// what protects a stolen key file against guessing, and values below
/// [`keyfile::MIN_LOG_N`] make that cheap. Values from 1 to [`keyfile::MAX_LOG_N`] are
/// accepted; anything else is ignored. Reading a key file always uses the cost stored in it.
pub const KEYFILE_LOG_N_ENV: &str = "PIGEONHOLE_KEYFILE_LOG_N";

/// A client's home directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    dir: PathBuf,
}

impl Home {
    /// A home at `dir` (created when an identity is created).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The platform's data directory for Pigeonhole (for example
    /// `~/.local/share/pigeonhole` on Linux), if the platform has one.
    pub fn platform_default() -> Option<Self> {
        directories::ProjectDirs::from("", "", "pigeonhole").map(|dirs| Self::new(dirs.data_dir()))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The encrypted key file.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join("key.json")
    }

    /// The database.
    pub fn db_path(&self) -> PathBuf {
        self.dir.join("client.sqlite3")
    }

    /// Whether an identity was created here.
    pub fn has_identity(&self) -> bool {
        self.key_path().exists()
    }

    /// Reads the key file (without decrypting it).
    pub fn read_key_file(&self) -> Result<KeyFile, ClientError> {
        let path = self.key_path();
        let text = std::fs::read_to_string(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ClientError::NoIdentity { home: self.dir.clone() }
            } else {
                ClientError::Io { path: path.clone(), source }
            }
        })?;
        KeyFile::from_json(&text).map_err(|source| ClientError::KeyFile { path, source })
    }

    /// Decrypts the key file with `passphrase`.
    pub fn unlock(&self, passphrase: &str) -> Result<SecretKey, ClientError> {
        let file = self.read_key_file()?;
        file.open(passphrase).map_err(|source| match source {
            KeyFileError::WrongPassword => ClientError::WrongPassphrase { path: self.key_path() },
            source => ClientError::KeyFile { path: self.key_path(), source },
        })
    }

    /// Encrypts `key` under `passphrase` and writes the key file (readable by the owner only),
    /// refusing to replace an existing one.
    pub(crate) fn write_key_file(&self, key: &SecretKey, passphrase: &str) -> Result<(), ClientError> {
        if passphrase.is_empty() {
            return Err(ClientError::EmptyPassphrase);
        }
        let path = self.key_path();
        let file = match test_log_n() {
            Some(log_n) => {
                let mut salt = [0u8; 16];
                let mut nonce = [0u8; 24];
                OsRng.fill_bytes(&mut salt);
                OsRng.fill_bytes(&mut nonce);
                KeyFile::seal_with_nonce(key, passphrase, log_n, salt, nonce)
            }
            None => KeyFile::seal(key, passphrase, keyfile::DEFAULT_LOG_N, &mut OsRng),
        }
        .map_err(|source| ClientError::KeyFile { path: path.clone(), source })?;
        std::fs::create_dir_all(&self.dir)
            .map_err(|source| ClientError::Io { path: self.dir.clone(), source })?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut handle = options.open(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                ClientError::IdentityExists { home: self.dir.clone() }
            } else {
                ClientError::Io { path: path.clone(), source }
            }
        })?;
        use std::io::Write as _;
        handle
            .write_all(file.to_json().as_bytes())
            .and_then(|()| handle.sync_all())
            .map_err(|source| ClientError::Io { path, source })
    }
}

fn test_log_n() -> Option<u8> {
    let value: u8 = std::env::var(KEYFILE_LOG_N_ENV).ok()?.trim().parse().ok()?;
    (1..=keyfile::MAX_LOG_N).contains(&value).then_some(value)
}
