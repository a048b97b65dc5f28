//! The key-encryption keys of persistence: where they come from (the
//! `keyFile`, a systemd credential, or an environment variable), how the
//! text is checked (64 hex digits per key, owner-only file permissions),
//! and the live set the shards read, re-read on SIGHUP for online rotation.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use shardmq_core::buffer::log::{self, Kek};

use super::PersistError;

/// The systemd credential name (`LoadCredential=persistence-key:...`).
pub const CREDENTIAL_NAME: &str = "persistence-key";
/// The environment variable holding the keys when no file is given.
pub const KEY_ENV: &str = "SHARDMQ_PERSISTENCE_KEY";

/// Where the keys are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `persistence.keyFile`, or `$CREDENTIALS_DIRECTORY/persistence-key`.
    File(PathBuf),
    /// `SHARDMQ_PERSISTENCE_KEY` (read again on SIGHUP).
    Env,
}

impl KeySource {
    /// The configured file, else the systemd credential, else the
    /// environment variable; `None` when none is there.
    pub fn find(key_file: Option<&PathBuf>) -> Option<KeySource> {
        if let Some(f) = key_file {
            return Some(KeySource::File(f.clone()));
        }
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let path = PathBuf::from(dir).join(CREDENTIAL_NAME);
            if path.exists() {
                return Some(KeySource::File(path));
            }
        }
        std::env::var_os(KEY_ENV).map(|_| KeySource::Env)
    }

    fn describe(&self) -> String {
        match self {
            KeySource::File(p) => p.display().to_string(),
            KeySource::Env => KEY_ENV.to_owned(),
        }
    }

    /// Reads and checks the keys, current key first.
    fn read(&self) -> Result<Vec<Kek>, PersistError> {
        let bad = |message: String| PersistError::Key {
            origin: self.describe(),
            message,
        };
        let text = match self {
            KeySource::File(path) => {
                let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
                let mode = meta.permissions().mode();
                // A key others can read is a key beside the data in the clear.
                if mode & 0o077 != 0 {
                    return Err(bad(format!(
                        "group or others may access it (mode {:o}); make it owner-only: chmod 600",
                        mode & 0o777
                    )));
                }
                std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?
            }
            KeySource::Env => std::env::var(KEY_ENV).map_err(|e| bad(e.to_string()))?,
        };
        parse(&text).map_err(bad)
    }
}

/// One key per line (or separated by commas), newest first, as 64
/// hexadecimal digits; `#` starts a comment. The message never quotes a key.
fn parse(text: &str) -> Result<Vec<Kek>, String> {
    let mut keys = Vec::new();
    let entries = text
        .lines()
        .enumerate()
        .flat_map(|(i, line)| {
            let line = line.split('#').next().unwrap_or("");
            line.split(',').map(move |e| (i + 1, e.trim()))
        })
        .filter(|(_, e)| !e.is_empty());
    for (line, entry) in entries {
        let bytes = hex32(entry).ok_or_else(|| {
            format!(
                "line {line}: a key is 64 hexadecimal digits (32 bytes), e.g. the output of \
                 `openssl rand -hex 32`"
            )
        })?;
        keys.push(Kek::new(&bytes).map_err(|e| e.to_string())?);
    }
    if keys.is_empty() {
        return Err("holds no key (64 hexadecimal digits, e.g. `openssl rand -hex 32`)".into());
    }
    Ok(keys)
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The keys in force, shared by the shards; `version` moves when the
/// current key changes, which makes every shard rewrite its log under it.
#[derive(Debug)]
pub struct KeyRing {
    source: KeySource,
    keys: RwLock<Arc<Vec<Kek>>>,
    version: AtomicU64,
    /// The key each shard's log is sealed under now: a reload may not drop
    /// one of these (the file would open under no key at the next start).
    sealing: Mutex<HashMap<u32, [u8; 8]>>,
}

impl KeyRing {
    pub fn load(source: KeySource) -> Result<KeyRing, PersistError> {
        let keys = source.read()?;
        Ok(KeyRing {
            source,
            keys: RwLock::new(Arc::new(keys)),
            version: AtomicU64::new(1),
            sealing: Mutex::new(HashMap::new()),
        })
    }

    /// Every key held, the current one first.
    pub fn keys(&self) -> Arc<Vec<Kek>> {
        match self.keys.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Shard `shard`'s log is now sealed under the key `fingerprint`.
    pub fn sealed(&self, shard: u32, fingerprint: [u8; 8]) {
        let mut map = match self.sealing.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.insert(shard, fingerprint);
    }

    /// A shard whose log is sealed under a key `fresh` does not hold.
    fn still_sealing(&self, fresh: &[Kek]) -> Option<(u32, String)> {
        let map = match self.sealing.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut shards: Vec<_> = map.iter().collect();
        shards.sort();
        shards
            .into_iter()
            .find(|(_, fp)| !fresh.iter().any(|k| k.fingerprint() == **fp))
            .map(|(shard, fp)| (*shard, log::fingerprint_hex(fp)))
    }

    /// Reads the source again (SIGHUP). Returns the new current key's name
    /// when it changed; the old keys must stay listed until every shard
    /// has rewritten its log (the log line says when).
    pub fn reload(&self) -> Result<Option<String>, PersistError> {
        let fresh = self.source.read()?;
        let old = self.keys();
        let changed = old.first().map(Kek::fingerprint) != fresh.first().map(Kek::fingerprint);
        let name = fresh.first().map(Kek::name);
        let missing: Vec<String> = old
            .iter()
            .filter(|k| !fresh.iter().any(|f| f.fingerprint() == k.fingerprint()))
            .map(Kek::name)
            .collect();
        if let Some((shard, key)) = self.still_sealing(&fresh) {
            return Err(PersistError::Key {
                origin: self.source.describe(),
                message: format!(
                    "the new key list drops key {key}, which still seals shard {shard}'s log \
                     (its rewrite under the current key has not finished, or failed: see the \
                     log); keep it listed until the rotation is logged as done"
                ),
            });
        }
        if changed && !missing.is_empty() {
            // Files may still be wrapped under the old key until the shards
            // rewrite them: dropping it now could leave a file no key opens.
            return Err(PersistError::Key {
                origin: self.source.describe(),
                message: format!(
                    "the new key list drops key(s) {} while the current key changes: list the \
                     new key first and keep the old one below it until the rotation is logged \
                     as done",
                    missing.join(", ")
                ),
            });
        }
        let mut guard = match self.keys.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(fresh);
        if changed {
            self.version.fetch_add(1, Ordering::AcqRel);
            return Ok(name);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    #[test]
    fn keys_parse_newest_first_with_comments_and_never_echo_a_bad_key() {
        let keys = parse(&format!("# rotated 2026-12\n{B}\n{A} # old\n")).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(
            keys[0].fingerprint(),
            Kek::new(&hex32(B).unwrap()).unwrap().fingerprint()
        );
        assert_eq!(parse(&format!("{A},{B}")).unwrap().len(), 2);
        let short = &A[..62];
        let e = parse(short).err().unwrap();
        assert!(e.contains("line 1") && !e.contains(short), "{e}");
        assert!(parse("# nothing\n").is_err());
    }

    #[test]
    fn a_key_file_others_may_read_is_refused() {
        let dir = std::env::temp_dir().join(format!("smq-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, A).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = KeyRing::load(KeySource::File(path.clone())).err().unwrap();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let ring = KeyRing::load(KeySource::File(path.clone())).unwrap();
        // Rotation: the new key first, the old one kept.
        std::fs::write(&path, format!("{B}\n{A}\n")).unwrap();
        assert!(ring.reload().unwrap().is_some());
        assert_eq!(ring.version(), 2);
        // Dropping the old key in the same step as changing the current one.
        std::fs::write(&path, A).unwrap();
        assert!(ring.reload().is_err());
        // Dropping the old key while a shard's log is still sealed under it
        // (its rewrite pending or failing), then once it is rewritten.
        let fp = |hex: &str| Kek::new(&hex32(hex).unwrap()).unwrap().fingerprint();
        ring.sealed(0, fp(B));
        ring.sealed(1, fp(A));
        std::fs::write(&path, B).unwrap();
        let e = ring.reload().err().unwrap().to_string();
        assert!(
            e.contains("shard 1") && e.contains(&log::fingerprint_hex(&fp(A))),
            "{e}"
        );
        assert_eq!(ring.keys().len(), 2, "the refused list is not taken");
        ring.sealed(1, fp(B));
        assert_eq!(ring.reload().unwrap(), None);
        assert_eq!(ring.keys().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
