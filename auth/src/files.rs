//! Reading PEM certificates and keys, and writing key material with
//! owner-only permissions. Every error names the file, so the server can
//! print `tls.manual.certFile /etc/x.pem: no certificate in file` as is.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate, key or other file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct FileError {
    pub path: PathBuf,
    pub problem: FileProblem,
}

impl FileError {
    pub(crate) fn new(path: &Path, problem: FileProblem) -> FileError {
        FileError {
            path: path.to_owned(),
            problem,
        }
    }
}

#[derive(Debug)]
pub enum FileProblem {
    Io(std::io::Error),
    /// A PEM section could not be decoded.
    Pem(String),
    NoCertificate,
    NoPrivateKey,
    /// The content parsed but is not usable (wrong type, bad DER...).
    Invalid(String),
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileProblem::Io(e) => write!(f, "{e}"),
            FileProblem::Pem(e) => write!(f, "invalid PEM: {e}"),
            FileProblem::NoCertificate => f.write_str("no \"CERTIFICATE\" PEM section in file"),
            FileProblem::NoPrivateKey => f.write_str(
                "no private key in file (expected a PEM \"PRIVATE KEY\", \"EC PRIVATE KEY\" or \"RSA PRIVATE KEY\" section)",
            ),
            FileProblem::Invalid(e) => f.write_str(e),
        }
    }
}

/// Reads a file whole; the error names it.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|e| FileError::new(path, FileProblem::Io(e)))
}

/// Every certificate of a PEM file (a chain or a bundle), in file order;
/// at least one.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, FileError> {
    certs_from_pem(&read(path)?).map_err(|problem| FileError::new(path, problem))
}

pub(crate) fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, FileProblem> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| FileProblem::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(FileProblem::NoCertificate);
    }
    Ok(certs)
}

/// The first private key of a PEM file: PKCS#8, SEC1 (EC) or PKCS#1 (RSA).
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, FileError> {
    private_key_from_pem(&read(path)?).map_err(|problem| FileError::new(path, problem))
}

pub(crate) fn private_key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, FileProblem> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => FileProblem::NoPrivateKey,
        other => FileProblem::Pem(other.to_string()),
    })
}

/// Writes `contents` to `path` readable and writable by the owner only
/// (0600), replacing the file atomically: written to a temporary file in
/// the same directory, then renamed, so a reader never sees half a key.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), FileError> {
    write_with_mode(path, contents, 0o600)
}

/// Writes a certificate others must read (clients trusting the CA): 0644.
pub fn write_public(path: &Path, contents: &[u8]) -> Result<(), FileError> {
    write_with_mode(path, contents, 0o644)
}

fn write_with_mode(path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    let io = |e| FileError::new(path, FileProblem::Io(e));
    let file_name = path
        .file_name()
        .ok_or_else(|| FileError::new(path, FileProblem::Invalid("not a file path".to_owned())))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // The mode applies at creation, so the key is never readable by
        // others, not even for an instant.
        options.mode(mode);
    }
    let result = (|| {
        let mut file = options.open(&temp)?;
        #[cfg(unix)]
        {
            // A leftover temporary file keeps its old mode: set it again.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn private_files_are_owner_only_and_public_ones_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        write_private(&key, b"secret").unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(&key).unwrap(), b"secret");
        let cert = dir.path().join("c.pem");
        write_public(&cert, b"cert").unwrap();
        let mode = std::fs::metadata(&cert).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        // Overwriting a world-readable file with a key makes it private.
        write_private(&cert, b"now a key").unwrap();
        let mode = std::fs::metadata(&cert).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem").unwrap();
        let err = read_certs(&empty).unwrap_err().to_string();
        assert!(
            err.ends_with("empty.pem: no \"CERTIFICATE\" PEM section in file"),
            "{err}"
        );
        let err = read_private_key(&empty).unwrap_err().to_string();
        assert!(err.contains("empty.pem: no private key in file"), "{err}");
        let err = read_certs(&dir.path().join("missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.pem: "), "{err}");
    }
}
