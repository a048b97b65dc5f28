//! Mosquitto password files (`mosquitto_passwd`): `user:$7$iterations$salt$hash`
//! (PBKDF2-HMAC-SHA512, Mosquitto 2.x) and `user:$6$salt$hash` (salted
//! SHA-512, Mosquitto 1.x), base64 fields. Parsed once at load (any other
//! format is an error naming file and line); verification runs in constant
//! time for the hash comparison and costs the same for unknown users.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::{digest, pbkdf2};

/// SHA-512 output, the only hash length Mosquitto writes.
const HASH_LEN: usize = digest::SHA512_OUTPUT_LEN;

/// More PBKDF2 rounds than this would make every CONNECT with a password a
/// long stall of its shard; Mosquitto writes 101 by default.
const ITERATIONS_MAX: u32 = 1_000_000;

/// Why a password file cannot be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error("{path}: cannot read password file: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {problem}")]
    Line {
        path: PathBuf,
        line: usize,
        problem: String,
    },
}

/// One user's stored hash.
#[derive(Clone, PartialEq, Eq)]
enum StoredHash {
    /// `$7$`: PBKDF2-HMAC-SHA512 over the password with the salt.
    Pbkdf2Sha512 {
        iterations: NonZeroU32,
        salt: Vec<u8>,
        hash: [u8; HASH_LEN],
    },
    /// `$6$`: SHA-512(password || salt).
    Sha512 { salt: Vec<u8>, hash: [u8; HASH_LEN] },
}

impl StoredHash {
    fn parse(text: &str) -> Result<StoredHash, String> {
        let decode = |field: &str, what: &str| {
            STANDARD
                .decode(field)
                .map_err(|e| format!("{what} is not base64: {e}"))
        };
        let hash_of = |field: &str| -> Result<[u8; HASH_LEN], String> {
            let bytes = decode(field, "hash")?;
            <[u8; HASH_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
                format!(
                    "hash is {} bytes, a SHA-512 hash is {HASH_LEN}",
                    bytes.len()
                )
            })
        };
        let fields: Vec<&str> = text.split('$').collect();
        match fields.as_slice() {
            ["", "7", iterations, salt, hash] => {
                let iterations = iterations
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n <= ITERATIONS_MAX)
                    .and_then(NonZeroU32::new)
                    .ok_or_else(|| {
                        format!("iterations must be 1..={ITERATIONS_MAX}, got \"{iterations}\"")
                    })?;
                Ok(StoredHash::Pbkdf2Sha512 {
                    iterations,
                    salt: decode(salt, "salt")?,
                    hash: hash_of(hash)?,
                })
            }
            ["", "6", salt, hash] => Ok(StoredHash::Sha512 {
                salt: decode(salt, "salt")?,
                hash: hash_of(hash)?,
            }),
            ["", kind, ..] => Err(format!(
                "unsupported hash \"${kind}$\": only mosquitto_passwd's $7$ (PBKDF2-SHA512) and $6$ (SHA-512) are accepted"
            )),
            _ => Err("the password is not hashed: create the file with mosquitto_passwd (plain-text passwords are not accepted)".to_owned()),
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self {
            StoredHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                // ring compares in constant time.
                pbkdf2::verify(
                    pbkdf2::PBKDF2_HMAC_SHA512,
                    *iterations,
                    salt,
                    password,
                    hash,
                )
                .is_ok()
            }
            StoredHash::Sha512 { salt, hash } => {
                let mut ctx = digest::Context::new(&digest::SHA512);
                ctx.update(password);
                ctx.update(salt);
                constant_time_eq(ctx.finish().as_ref(), hash)
            }
        }
    }
}

/// Equality whose time depends only on the (public) lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

/// A loaded password file: username -> hash.
#[derive(Clone)]
pub struct PasswordFile {
    path: PathBuf,
    users: HashMap<String, StoredHash>,
    /// Verified against for unknown users, so that "no such user" takes as
    /// long as "wrong password" and does not reveal which users exist.
    decoy: StoredHash,
}

impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile")
            .field("path", &self.path)
            .field("users", &self.users.len())
            .finish()
    }
}

impl PasswordFile {
    pub fn load(path: &Path) -> Result<PasswordFile, PasswordFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PasswordFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        PasswordFile::parse(&text, path)
    }

    /// Parses the file's text; `path` is only for messages. Empty lines and
    /// lines starting with '#' are skipped, as Mosquitto does.
    pub fn parse(text: &str, path: &Path) -> Result<PasswordFile, PasswordFileError> {
        let mut users = HashMap::new();
        for (index, raw_line) in text.lines().enumerate() {
            let line = raw_line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let problem = |problem: String| PasswordFileError::Line {
                path: path.to_owned(),
                line: index + 1,
                problem,
            };
            let Some((user, hash)) = line.split_once(':') else {
                return Err(problem("expected \"username:hash\"".to_owned()));
            };
            if user.is_empty() {
                return Err(problem("empty username".to_owned()));
            }
            let hash = StoredHash::parse(hash).map_err(problem)?;
            if users.insert(user.to_owned(), hash).is_some() {
                return Err(problem(format!("user \"{user}\" appears twice")));
            }
        }
        let decoy = users
            .values()
            .next()
            .cloned()
            .unwrap_or(StoredHash::Pbkdf2Sha512 {
                iterations: NonZeroU32::MIN.saturating_add(100),
                salt: vec![0; 12],
                hash: [0; HASH_LEN],
            });
        Ok(PasswordFile {
            path: path.to_owned(),
            users,
            decoy,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `password` is `username`'s.
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        match self.users.get(username) {
            Some(hash) => hash.verify(password),
            None => {
                let _ = self.decoy.verify(password);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PasswordFile, PasswordFileError> {
        PasswordFile::parse(text, Path::new("pw.txt"))
    }

    /// `mosquitto_passwd -b -c pw.txt alice secret` (Mosquitto 2.0).
    const PBKDF2_LINE: &str = "alice:$7$101$mCEzUuO1jVfDW5f0$Fx4PHuw9NpLxjS1DbXon0iJd1dm5qWDCzMrIM+Q0hmq7G9m0JoSRfysr+IWpV/Z/O9U8MicF87wGvuGwTqQubg==";

    fn sha512_line(user: &str, password: &str, salt: &[u8]) -> String {
        let mut ctx = digest::Context::new(&digest::SHA512);
        ctx.update(password.as_bytes());
        ctx.update(salt);
        format!(
            "{user}:$6${}${}",
            STANDARD.encode(salt),
            STANDARD.encode(ctx.finish().as_ref())
        )
    }

    #[test]
    fn pbkdf2_sha512_lines_from_mosquitto_passwd_verify() {
        let file = parse(&format!("# comment\n\n{PBKDF2_LINE}\n")).unwrap();
        assert_eq!(file.len(), 1);
        assert!(file.verify("alice", b"secret"));
        assert!(!file.verify("alice", b"Secret"));
        assert!(!file.verify("bob", b"secret"));
    }

    #[test]
    fn salted_sha512_lines_verify() {
        let file = parse(&sha512_line("bob", "hunter2", b"0123456789ab")).unwrap();
        assert!(file.verify("bob", b"hunter2"));
        assert!(!file.verify("bob", b"hunter3"));
    }

    #[test]
    fn other_formats_are_rejected_at_load_with_file_and_line() {
        let err = parse("alice:plaintext").unwrap_err().to_string();
        assert!(
            err.starts_with("pw.txt:1: the password is not hashed"),
            "{err}"
        );
        let err = parse("\n$bcrypt\nalice:$2b$12$abc")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("pw.txt:2: expected"), "{err}");
        let err = parse("alice:$2b$12$abc").unwrap_err().to_string();
        assert!(err.contains("unsupported hash \"$2b$\""), "{err}");
        let err = parse("alice:$7$0$AAAA$AAAA").unwrap_err().to_string();
        assert!(err.contains("iterations"), "{err}");
        let err = parse("alice:$6$AAAA$AAAA").unwrap_err().to_string();
        assert!(err.contains("a SHA-512 hash is 64"), "{err}");
        let err = parse("alice:$6$!!$AAAA").unwrap_err().to_string();
        assert!(err.contains("salt is not base64"), "{err}");
    }

    #[test]
    fn a_user_listed_twice_is_an_error() {
        let text = format!("{PBKDF2_LINE}\n{PBKDF2_LINE}\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("pw.txt:2: user \"alice\" appears twice"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_file_accepts_no_one() {
        let file = parse("").unwrap();
        assert!(file.is_empty());
        assert!(!file.verify("alice", b"secret"));
    }

    #[test]
    fn debug_does_not_print_hashes() {
        let file = parse(PBKDF2_LINE).unwrap();
        let debug = format!("{file:?}");
        assert!(!debug.contains("Fx4P"), "{debug}");
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let err = PasswordFile::load(Path::new("/nonexistent/pw.txt")).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("/nonexistent/pw.txt: cannot read"));
    }
}
