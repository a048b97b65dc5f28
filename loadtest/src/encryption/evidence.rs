//! What a finished broker run shows about its setting, read from what it left
//! behind: its log (the start-up lines naming `encryptInternalTraffic`, the
//! per-shard disk buffer lines, the shutdown counts of spilled messages) and
//! its disk-buffer segment files (sealed or plain blocks, and whether the
//! harness's plaintext marker is in them). Reads files only; decides nothing.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::payload::PLAINTEXT_MARKER;

/// What the broker's log says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogFacts {
    /// `shardmq 0.1.0` from the first start-up line.
    pub version: Option<String>,
    pub shards: Option<usize>,
    /// The start-up summary's `encryptInternalTraffic: ...` (true = Enabled).
    pub encrypt: Option<bool>,
    /// Each shard's `disk buffer open ... encryptInternalTraffic=...`.
    pub buffer_encrypt: Vec<bool>,
    /// Shards that logged `disk buffer unavailable`.
    pub buffer_unavailable: usize,
    /// Summed over shards from the last `disk buffer stats` line of each.
    pub spill: Option<SpillCounts>,
}

/// Disk-buffer counters at shutdown, summed over shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpillCounts {
    /// Messages written to the buffer (each sealed once).
    pub appended: u64,
    /// Messages read back (each opened once; a resend reads again).
    pub read: u64,
    /// Reads that failed authentication/checksum.
    pub lost: u64,
    /// Appends refused (buffer full, no space).
    pub refused: u64,
}

fn value_of<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[at..];
    let end = rest.find(' ').unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"'))
}

fn mode(text: &str) -> Option<bool> {
    match text.trim() {
        t if t.eq_ignore_ascii_case("enabled") => Some(true),
        t if t.eq_ignore_ascii_case("disabled") => Some(false),
        _ => None,
    }
}

impl LogFacts {
    pub fn parse(log: &str) -> LogFacts {
        let mut facts = LogFacts::default();
        let mut stats: std::collections::BTreeMap<String, SpillCounts> = Default::default();
        for line in log.lines() {
            if let Some(rest) = line
                .split(" shardmq ")
                .nth(1)
                .filter(|r| r.contains("shard(s)"))
            {
                let mut words = rest.split_whitespace();
                facts.version = words
                    .next()
                    .map(|v| format!("shardmq {}", v.trim_end_matches(':')));
                facts.shards = words.next().and_then(|n| n.parse().ok());
            } else if let Some(rest) = line.split("encryptInternalTraffic: ").nth(1) {
                facts.encrypt = mode(rest);
            } else if line.contains("disk buffer open") {
                if let Some(m) = value_of(line, "encryptInternalTraffic").and_then(mode) {
                    facts.buffer_encrypt.push(m);
                }
            } else if line.contains("disk buffer unavailable") {
                facts.buffer_unavailable += 1;
            } else if line.contains("disk buffer stats") {
                let n = |k: &str| value_of(line, k).and_then(|v| v.parse().ok()).unwrap_or(0);
                let shard = value_of(line, "shard").unwrap_or("0").to_owned();
                stats.insert(
                    shard,
                    SpillCounts {
                        appended: n("appended"),
                        read: n("read"),
                        lost: n("lost"),
                        refused: n("refused"),
                    },
                );
            }
        }
        if !stats.is_empty() {
            facts.spill = Some(
                stats
                    .values()
                    .fold(SpillCounts::default(), |a, s| SpillCounts {
                        appended: a.appended + s.appended,
                        read: a.read + s.read,
                        lost: a.lost + s.lost,
                        refused: a.refused + s.refused,
                    }),
            );
        }
        facts
    }

    /// Why this log does not show `want` in force; empty when it does.
    pub fn contradictions(&self, want: bool) -> Vec<String> {
        let name = |b: bool| if b { "Enabled" } else { "Disabled" };
        let mut out = Vec::new();
        match self.encrypt {
            Some(m) if m != want => out.push(format!(
                "the broker started with encryptInternalTraffic {} (asked for {})",
                name(m),
                name(want)
            )),
            None => out
                .push("the broker's start-up log does not name encryptInternalTraffic".to_owned()),
            Some(_) => {}
        }
        if self.buffer_encrypt.iter().any(|&m| m != want) {
            out.push(format!(
                "a shard's disk buffer opened with encryptInternalTraffic {}",
                name(!want)
            ));
        }
        out
    }
}

/// What the buffer's segment files hold after the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentScan {
    pub files: usize,
    /// Blocks whose header says AES-256-GCM sealed / CRC-32 plaintext
    /// (docs/BUFFER.md's framing, which is not encrypted).
    pub sealed_blocks: u64,
    pub plain_blocks: u64,
    /// The payload padding's marker text was found in a file.
    pub plaintext_marker: bool,
}

const SEGMENT_HEADER_LEN: usize = 32;
const BLOCK_HEADER_LEN: usize = 8;
const BLOCK_MAGIC: [u8; 2] = 0x4B42u16.to_le_bytes();

/// Walks the blocks from the segment header on; returns (sealed, plain,
/// end of the last block). Stops at the first byte that is not a block.
fn walk_blocks(file: &[u8]) -> (u64, u64, usize) {
    let (mut sealed, mut plain, mut at) = (0, 0, SEGMENT_HEADER_LEN);
    while let Some(h) = file.get(at..at + BLOCK_HEADER_LEN) {
        if h[..2] != BLOCK_MAGIC {
            break;
        }
        let is_sealed = u16::from_le_bytes([h[2], h[3]]) & 1 == 1;
        let body = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        let trailer = if is_sealed { 16 } else { 4 };
        let end = at + BLOCK_HEADER_LEN + body + trailer;
        if end > file.len() {
            break;
        }
        if is_sealed {
            sealed += 1;
        } else {
            plain += 1;
        }
        at = end;
    }
    (sealed, plain, at)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Scans `data_dir/shard-*/*.smq`.
pub fn scan_segments(data_dir: &Path) -> std::io::Result<SegmentScan> {
    let mut scan = SegmentScan::default();
    let Ok(shards) = std::fs::read_dir(data_dir) else {
        return Ok(scan);
    };
    for shard in shards.flatten() {
        let Ok(files) = std::fs::read_dir(shard.path()) else {
            continue;
        };
        for file in files.flatten() {
            let path = file.path();
            if path.extension().is_none_or(|e| e != "smq") {
                continue;
            }
            // A segment reclaimed while the broker runs may go any moment.
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            scan.files += 1;
            let (sealed, plain, end) = walk_blocks(&bytes);
            scan.sealed_blocks += sealed;
            scan.plain_blocks += plain;
            // Past the blocks a file is preallocated zeros; if the framing
            // was not recognised at all, search the whole file.
            let searched = if sealed + plain > 0 {
                &bytes[..end]
            } else {
                &bytes[..]
            };
            scan.plaintext_marker |= contains(searched, PLAINTEXT_MARKER);
        }
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
2026-12-04T23:42:42.054155Z  INFO shardmq 0.1.0: 2 shard(s), pinned to CPUs: true
2026-12-04T23:42:42.054197Z  INFO encryptInternalTraffic: Disabled
2026-12-04T23:42:42.058968Z  INFO disk buffer open shard=0 dir=/x/shard-0 max_bytes=1 encryptInternalTraffic=\"Disabled\" leftover_segments_removed=0
2026-12-04T23:42:42.058968Z  INFO disk buffer open shard=1 dir=/x/shard-1 max_bytes=1 encryptInternalTraffic=\"Disabled\" leftover_segments_removed=0
2026-12-04T23:42:46.076659Z  INFO disk buffer stats shard=0 memory_bytes=0 appended=5 read=4 lost=0 refused=0
2026-12-04T23:42:46.076659Z  INFO disk buffer stats shard=1 memory_bytes=0 appended=3808 read=3808 lost=1 refused=2 reclaimed_segments=0
2026-12-04T23:42:46.076659Z  INFO disk buffer stats shard=0 memory_bytes=0 appended=10 read=10 lost=0 refused=0
";

    #[test]
    fn the_log_names_the_setting_and_the_spilled_counts() {
        let f = LogFacts::parse(LOG);
        assert_eq!(f.version.as_deref(), Some("shardmq 0.1.0"));
        assert_eq!(f.shards, Some(2));
        assert_eq!(f.encrypt, Some(false));
        assert_eq!(f.buffer_encrypt, vec![false, false]);
        // The last line per shard counts.
        assert_eq!(
            f.spill,
            Some(SpillCounts {
                appended: 3818,
                read: 3818,
                lost: 1,
                refused: 2
            })
        );
        assert!(f.contradictions(false).is_empty());
        assert_eq!(f.contradictions(true).len(), 2);
        assert_eq!(LogFacts::parse("").contradictions(true).len(), 1);
    }

    #[test]
    fn blocks_are_walked_and_the_marker_found_only_inside_them() {
        let mut seg = vec![0u8; SEGMENT_HEADER_LEN];
        let block = |sealed: bool, body: &[u8]| {
            let mut b = BLOCK_MAGIC.to_vec();
            b.extend_from_slice(&u16::from(sealed).to_le_bytes());
            b.extend_from_slice(&(body.len() as u32).to_le_bytes());
            b.extend_from_slice(body);
            b.extend(std::iter::repeat_n(0xEE, if sealed { 16 } else { 4 }));
            b
        };
        seg.extend(block(true, &[1; 100]));
        seg.extend(block(false, PLAINTEXT_MARKER));
        let (sealed, plain, end) = walk_blocks(&seg);
        assert_eq!((sealed, plain, end), (1, 1, seg.len()));
        seg.extend(vec![0; 64]);
        let dir = std::env::temp_dir().join(format!("lt-scan-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("shard-0")).unwrap();
        std::fs::write(dir.join("shard-0/seg-1.smq"), &seg).unwrap();
        std::fs::write(dir.join("shard-0/notes.txt"), PLAINTEXT_MARKER).unwrap();
        let scan = scan_segments(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            scan,
            SegmentScan {
                files: 1,
                sealed_blocks: 1,
                plain_blocks: 1,
                plaintext_marker: true
            }
        );
    }
}
