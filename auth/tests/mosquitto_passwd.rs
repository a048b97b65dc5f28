//! Password files written by the real `mosquitto_passwd` verify: both the
//! default PBKDF2-SHA512 (`$7$`) and the older salted SHA-512 (`$6$`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use shardmq_auth::password::PasswordFile;

const MOSQUITTO_PASSWD: &str = "/usr/bin/mosquitto_passwd";

/// Runs `mosquitto_passwd` with `args`; `None` (and a note) when it is absent.
fn mosquitto_passwd(args: &[&str]) -> Option<()> {
    if !Path::new(MOSQUITTO_PASSWD).exists() {
        eprintln!(
            "note: {MOSQUITTO_PASSWD} not installed (Debian package mosquitto); test skipped"
        );
        return None;
    }
    let status = Command::new(MOSQUITTO_PASSWD).args(args).status().unwrap();
    assert!(status.success(), "mosquitto_passwd {args:?} failed");
    Some(())
}

#[test]
fn a_file_made_by_mosquitto_passwd_verifies_both_hash_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let file_str = file.to_str().unwrap();
    if mosquitto_passwd(&["-b", "-c", file_str, "alice", "s3cret"]).is_none() {
        return;
    }
    mosquitto_passwd(&["-H", "sha512", "-b", file_str, "bob", "hunter2"]).unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("alice:$7$"), "{text}");
    assert!(text.contains("bob:$6$"), "{text}");

    let passwords = PasswordFile::load(&file).unwrap();
    assert_eq!(passwords.len(), 2);
    assert!(passwords.verify("alice", b"s3cret"));
    assert!(passwords.verify("bob", b"hunter2"));
    assert!(!passwords.verify("alice", b"hunter2"), "wrong password");
    assert!(!passwords.verify("bob", b"s3cret"), "wrong password");
    assert!(!passwords.verify("carol", b"s3cret"), "unknown user");
}
