//! The disk buffer on real files: append/read/release across small
//! segments, reclaim, the size bound, restart, bad data directories, a
//! flipped byte on disk, and no plaintext in the files when encrypted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::fs;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use shardmq_core::buffer::{RecordError, RecordRef};
use shardmq_core::codec::{Properties, QoS};
use shardmq_core::session::Message;
use shardmq_core::topic::TopicName;
use shardmq_io::buffer::{BufferError, Deleter, DiskBuffer, DoomedSegment, SegmentFile};

const SEGMENT_BYTES: u64 = 64 * 1024;
const MARKER: &[u8] = b"PAYLOAD-MARKER-7f3a";

/// A fresh directory under the system temp dir, deleted on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("shardmq-buffer-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn message(i: usize, payload_len: usize) -> Message {
    let mut payload = format!("{i:08}-").into_bytes();
    payload.extend_from_slice(MARKER);
    payload.resize(payload_len.max(payload.len()), b'.');
    Message {
        topic: TopicName::try_from(format!("fleet/truck-{}/gps", i % 7).as_str()).unwrap(),
        payload: Bytes::from(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties {
            user_properties: vec![("k".into(), "v".into())],
            ..Properties::default()
        }
        .into(),
        expires_at: Some(Instant::now() + Duration::from_secs(60)),
        origin: ByteString::from_static("truck"),
        retain_stamp: 0,
    }
}

fn open(dir: &Path, size_max: u64, encrypt: bool) -> DiskBuffer {
    DiskBuffer::open(dir, 0, size_max, SEGMENT_BYTES, encrypt, Instant::now()).unwrap()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir.join("shard-0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn files_contain(dir: &Path, needle: &[u8]) -> bool {
    segment_files(dir).iter().any(|p| {
        let bytes = fs::read(p).unwrap();
        bytes.windows(needle.len()).any(|w| w == needle)
    })
}

#[test]
fn messages_read_back_in_order_across_segments_in_both_modes() {
    for encrypt in [true, false] {
        let tmp = TempDir::new();
        let mut buf = open(&tmp.0, 1 << 20, encrypt);
        let mut refs = Vec::new();
        for i in 0..600 {
            let owner = (i % 3) as u64;
            let len = if i % 50 == 0 { 5000 } else { 64 };
            refs.push((owner, buf.append(owner, &message(i, len)).unwrap(), i, len));
        }
        let segments: std::collections::HashSet<u32> = refs.iter().map(|r| r.1.segment).collect();
        assert!(segments.len() >= 3, "only {} segments", segments.len());
        for (owner, r, i, len) in &refs {
            let got = buf.read(*r, *owner).unwrap();
            let want = message(*i, *len);
            assert_eq!(got.payload, want.payload, "encrypt={encrypt} i={i}");
            assert_eq!(got.topic, want.topic);
            assert_eq!(got.properties, want.properties);
        }
        let s = buf.stats();
        assert_eq!((s.appended, s.read, s.corrupt), (600, 600, 0));
    }
}

#[test]
fn pending_records_read_back_before_flush() {
    let tmp = TempDir::new();
    let mut buf = open(&tmp.0, 1 << 20, true);
    let r = buf.append(9, &message(1, 64)).unwrap();
    assert_eq!(buf.read(r, 9).unwrap().payload, message(1, 64).payload);
    buf.flush().unwrap();
    assert_eq!(buf.read(r, 9).unwrap().payload, message(1, 64).payload);
}

#[test]
fn reading_with_another_owner_is_corrupt_and_counted() {
    let tmp = TempDir::new();
    let mut buf = open(&tmp.0, 1 << 20, true);
    let r = buf.append(1, &message(1, 64)).unwrap();
    buf.flush().unwrap();
    let err = buf.read(r, 2).unwrap_err();
    assert!(
        matches!(err, BufferError::Corrupt(RecordError::WrongOwner)),
        "{err:?}"
    );
    assert_eq!(buf.stats().corrupt, 1);
}

#[test]
fn released_segments_are_reclaimed_kept_as_spares_and_the_rest_deleted() {
    let tmp = TempDir::new();
    let mut buf = open(&tmp.0, 1 << 20, true);
    let refs: Vec<RecordRef> = (0..400)
        .map(|i| buf.append(1, &message(i, 1000)).unwrap())
        .collect();
    buf.flush().unwrap();
    let before = segment_files(&tmp.0).len();
    assert!(before >= 5, "{before} files");
    for r in &refs {
        buf.read(*r, 1).unwrap();
        buf.release(*r);
    }
    // The active segment stays, two reclaimed ones are kept for reuse and
    // the others are deleted.
    assert_eq!(segment_files(&tmp.0).len(), 3);
    let s = buf.stats();
    assert_eq!(s.reclaimed_segments as usize, before - 1);
    assert_eq!((s.segments, s.live_records), (3, 0));
    assert_eq!(s.bytes_used, 3 << 16, "spares count against maxSize");
    // The next segments are the recycled files: no file is created.
    let files = segment_files(&tmp.0);
    let more: Vec<RecordRef> = (0..100)
        .map(|i| buf.append(1, &message(i, 1000)).unwrap())
        .collect();
    assert_eq!(segment_files(&tmp.0), files);
    for (i, r) in more.iter().enumerate() {
        let m = buf.read(*r, 1).unwrap();
        assert_eq!(
            m.payload,
            message(i, 1000).payload,
            "record {i} of a recycled segment"
        );
    }
    // A released record in a reclaimed segment is gone, not corrupt.
    let err = buf.read(refs[0], 1).unwrap_err();
    assert!(matches!(err, BufferError::UnknownRecord(_)), "{err:?}");
    assert_eq!(buf.stats().corrupt, 0);
}

/// A deleter that keeps what it is handed, so a test decides when (and on
/// which thread) each file is deleted.
fn collect_doomed(buf: &mut DiskBuffer) -> Rc<RefCell<Vec<DoomedSegment>>> {
    let doomed: Rc<RefCell<Vec<DoomedSegment>>> = Rc::default();
    let sink = doomed.clone();
    buf.set_deleter(Deleter::new(move |d| sink.borrow_mut().push(d)));
    doomed
}

#[test]
fn a_segment_handed_to_the_deleter_counts_against_max_size_until_it_is_deleted() {
    let tmp = TempDir::new();
    let size_max = 4 * SEGMENT_BYTES;
    let mut buf = open(&tmp.0, size_max, true);
    let doomed = collect_doomed(&mut buf);
    let fill = |buf: &mut DiskBuffer, from: usize| -> Vec<RecordRef> {
        let mut refs = Vec::new();
        while let Ok(r) = buf.append(1, &message(from + refs.len(), 1000)) {
            refs.push(r);
            assert!(refs.len() < 10_000, "never became full");
        }
        refs
    };
    let refs = fill(&mut buf, 0);
    assert_eq!(segment_files(&tmp.0).len(), 4);
    // Release all but the active segment: two become spares, the third
    // goes to the deleter and stays on disk until the deleter drops it.
    let active = refs.last().unwrap().segment;
    for r in refs.iter().filter(|r| r.segment != active) {
        buf.release(*r);
    }
    assert_eq!(doomed.borrow().len(), 1);
    assert_eq!(segment_files(&tmp.0).len(), 4, "not deleted on the shard");
    assert_eq!(buf.stats().bytes_used, size_max, "still holds its space");
    // So the buffer reuses the spares but makes no new file while it waits.
    let more = fill(&mut buf, refs.len());
    assert!(!more.is_empty());
    assert!(segment_files(&tmp.0).len() <= 4);
    assert!(matches!(
        buf.append(1, &message(0, 1000)),
        Err(BufferError::Full { .. })
    ));
    // Deleted on another thread (the blocking pool in the server): the
    // file is gone and its space is usable again.
    let d = doomed.borrow_mut().pop().unwrap();
    std::thread::spawn(move || drop(d)).join().unwrap();
    assert_eq!(segment_files(&tmp.0).len(), 3);
    assert_eq!(buf.stats().bytes_used, 3 * SEGMENT_BYTES);
    buf.append(1, &message(0, 1000)).unwrap();
    assert_eq!(segment_files(&tmp.0).len(), 4);
    // Every record appended while the file waited reads back.
    for r in &more {
        buf.read(*r, 1).unwrap();
    }
}

#[test]
fn a_late_delete_from_an_earlier_buffer_never_removes_a_newer_buffers_file() {
    let tmp = TempDir::new();
    let doomed;
    {
        let mut old = open(&tmp.0, 1 << 20, true);
        doomed = collect_doomed(&mut old);
        let refs: Vec<RecordRef> = (0..400)
            .map(|i| old.append(1, &message(i, 1000)).unwrap())
            .collect();
        let active = refs.last().unwrap().segment;
        for r in refs.iter().filter(|r| r.segment != active) {
            old.release(*r);
        }
        assert!(!doomed.borrow().is_empty());
    }
    // A new buffer on the same directory (a restart inside one process):
    // it deletes the leftovers, the doomed files included, and makes its own.
    let mut new = open(&tmp.0, 1 << 20, true);
    let refs: Vec<RecordRef> = (0..200)
        .map(|i| new.append(1, &message(i, 1000)).unwrap())
        .collect();
    let files = segment_files(&tmp.0);
    // The old buffer's deletes finish late: they find their files gone and
    // touch none of the new buffer's.
    doomed.borrow_mut().clear();
    assert_eq!(segment_files(&tmp.0), files);
    for (i, r) in refs.iter().enumerate() {
        assert_eq!(new.read(*r, 1).unwrap().payload, message(i, 1000).payload);
    }
}

#[test]
fn add_ref_keeps_a_segment_until_every_reader_released() {
    let tmp = TempDir::new();
    let mut buf = open(&tmp.0, 1 << 20, false);
    let first = buf.append(0, &message(0, 1000)).unwrap();
    buf.add_ref(first).unwrap();
    let rest: Vec<_> = (1..200)
        .map(|i| buf.append(0, &message(i, 1000)).unwrap())
        .collect();
    assert_ne!(rest.last().unwrap().segment, first.segment);
    for r in rest.iter().filter(|r| r.segment == first.segment) {
        buf.release(*r);
    }
    buf.release(first);
    assert!(buf.read(first, 0).is_ok(), "second reader still holds it");
    buf.release(first);
    assert!(matches!(
        buf.read(first, 0),
        Err(BufferError::UnknownRecord(_))
    ));
}

#[test]
fn size_bound_holds_with_full_error() {
    let tmp = TempDir::new();
    let size_max = 4 * SEGMENT_BYTES;
    let mut buf = open(&tmp.0, size_max, true);
    let mut appended = 0;
    let err = loop {
        match buf.append(1, &message(appended, 1000)) {
            Ok(_) => appended += 1,
            Err(e) => break e,
        }
        assert!(appended < 10_000, "never became full");
    };
    assert!(matches!(err, BufferError::Full { .. }), "{err:?}");
    assert!(buf.stats().bytes_used <= size_max);
    let on_disk: u64 = segment_files(&tmp.0)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert!(on_disk <= size_max, "{on_disk} bytes on disk");
    assert_eq!(segment_files(&tmp.0).len(), 4);
    // Everything appended before `Full` is still readable.
    assert!(appended > 200);
}

#[test]
fn message_larger_than_a_segment_is_too_large() {
    let tmp = TempDir::new();
    let mut buf = open(&tmp.0, 1 << 20, true);
    let err = buf
        .append(1, &message(0, SEGMENT_BYTES as usize))
        .unwrap_err();
    assert!(matches!(err, BufferError::TooLarge { .. }), "{err:?}");
}

#[test]
fn restart_removes_leftover_segments_and_starts_empty() {
    let tmp = TempDir::new();
    {
        let mut buf = open(&tmp.0, 1 << 20, true);
        for i in 0..300 {
            buf.append(1, &message(i, 1000)).unwrap();
        }
        buf.flush().unwrap();
        // A crash: no destructor runs, the files stay.
        std::mem::forget(buf);
    }
    let left = segment_files(&tmp.0).len();
    assert!(left >= 3);
    fs::write(tmp.0.join("shard-0").join("operator-notes.txt"), b"keep me").unwrap();
    let buf = open(&tmp.0, 1 << 20, true);
    assert_eq!(buf.removed_at_open(), left);
    // Only what is not ours survives.
    let files = segment_files(&tmp.0);
    assert_eq!(files.len(), 1);
    assert!(files[0].ends_with("operator-notes.txt"));
    assert_eq!(buf.stats().segments, 0);
}

#[test]
fn data_dir_that_cannot_be_created_is_a_clear_error() {
    let tmp = TempDir::new();
    let file = tmp.0.join("file");
    fs::write(&file, b"not a directory").unwrap();
    let err = DiskBuffer::open(
        &file.join("sub"),
        0,
        1 << 20,
        SEGMENT_BYTES,
        true,
        Instant::now(),
    )
    .unwrap_err();
    assert!(matches!(err, BufferError::DataDir { .. }), "{err:?}");
    let shown = err.to_string();
    assert!(shown.contains("file/sub/shard-0"), "{shown}");
}

#[test]
fn missing_data_dir_is_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = TempDir::new();
    let dir = tmp.0.join("not/yet/there");
    let buf = DiskBuffer::open(&dir, 3, 1 << 20, SEGMENT_BYTES, true, Instant::now()).unwrap();
    assert_eq!(buf.dir(), dir.join("shard-3"));
    let mode = fs::metadata(buf.dir()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn segment_smaller_than_minimum_is_a_config_error() {
    let tmp = TempDir::new();
    let err = DiskBuffer::open(&tmp.0, 0, 1000, SEGMENT_BYTES, true, Instant::now()).unwrap_err();
    assert!(matches!(err, BufferError::Config(_)), "{err:?}");
}

#[test]
fn flipped_byte_on_disk_is_detected_and_counted() {
    for encrypt in [true, false] {
        let tmp = TempDir::new();
        let mut buf = open(&tmp.0, 1 << 20, encrypt);
        let refs: Vec<_> = (0..20)
            .map(|i| buf.append(1, &message(i, 64)).unwrap())
            .collect();
        let far = buf.append(1, &message(99, 30_000)).unwrap();
        buf.flush().unwrap();
        assert_ne!(refs[0].block, far.block);
        // Flip a byte inside the first record's block, behind the mapping's back.
        let path = &segment_files(&tmp.0)[0];
        let mut bytes = fs::read(path).unwrap();
        let i = refs[5].block as usize + 8 + refs[5].at as usize + 20;
        bytes[i] ^= 0x40;
        fs::write(path, &bytes).unwrap();
        for r in &refs {
            let err = buf.read(*r, 1).unwrap_err();
            assert!(
                matches!(err, BufferError::Corrupt(_)),
                "encrypt={encrypt}: {err:?}"
            );
        }
        // Other blocks are unaffected.
        assert_eq!(
            buf.read(far, 1).unwrap().payload,
            message(99, 30_000).payload
        );
        assert_eq!(buf.stats().corrupt, refs.len() as u64, "encrypt={encrypt}");
    }
}

#[test]
fn encrypted_segments_hold_no_plaintext_and_plain_ones_do() {
    for encrypt in [true, false] {
        let tmp = TempDir::new();
        let mut buf = open(&tmp.0, 1 << 20, encrypt);
        for i in 0..100 {
            buf.append(1, &message(i, if i % 10 == 0 { 20_000 } else { 64 }))
                .unwrap();
        }
        buf.flush().unwrap();
        assert_eq!(
            files_contain(&tmp.0, MARKER),
            !encrypt,
            "marker, encrypt={encrypt}"
        );
        assert_eq!(
            files_contain(&tmp.0, b"fleet/truck"),
            !encrypt,
            "topic, encrypt={encrypt}"
        );
    }
}

#[test]
fn key_rotation_applies_to_new_segments_and_old_keys_retire() {
    let tmp = TempDir::new();
    let mut buf = open(&tmp.0, 1 << 20, true);
    let old: Vec<_> = (0..100)
        .map(|i| buf.append(1, &message(i, 1000)).unwrap())
        .collect();
    buf.rotate_key().unwrap();
    let new: Vec<_> = (100..300)
        .map(|i| buf.append(1, &message(i, 1000)).unwrap())
        .collect();
    assert_eq!(buf.key_count(), 2);
    assert!(
        new[0].segment > old.last().unwrap().segment,
        "rotation starts a segment"
    );
    for (i, r) in old.iter().chain(&new).enumerate() {
        assert_eq!(buf.read(*r, 1).unwrap().payload, message(i, 1000).payload);
    }
    for r in &old {
        buf.release(*r);
    }
    assert_eq!(buf.key_count(), 1, "old key retired with its segments");
    assert!(buf.read(new[0], 1).is_ok());
}

#[test]
fn spare_segment_made_off_the_shard_is_used_for_the_next_roll() {
    let tmp = TempDir::new();
    let mut buf = open(&tmp.0, 1 << 20, true);
    buf.append(1, &message(0, 64)).unwrap();
    let req = buf.spare_request().unwrap();
    assert!(buf.spare_request().is_none(), "one request at a time");
    // In the broker this runs on glommio's blocking pool.
    let file = SegmentFile::create(&req.path, req.bytes);
    if let Ok(f) = &file {
        f.prefault();
    }
    buf.install_spare(file);
    assert_eq!(buf.stats().segments, 2);
    let refs: Vec<_> = (1..100)
        .map(|i| buf.append(1, &message(i, 1000)).unwrap())
        .collect();
    assert!(req.path.exists());
    assert!(refs.iter().any(|r| r.segment == 2));
}

#[test]
fn no_space_is_a_typed_error_at_allocation() {
    // A segment bigger than any disk here: fallocate says ENOSPC/EFBIG.
    let tmp = TempDir::new();
    let path = tmp.0.join("huge.smq");
    match SegmentFile::create(&path, 1 << 50) {
        Err(BufferError::NoSpace { .. }) => {}
        // Some file systems refuse such a size with EINVAL instead.
        Err(BufferError::Io { .. }) => {}
        other => panic!("expected NoSpace, got {other:?}"),
    }
    assert!(!path.exists(), "half-allocated file left behind");
}

#[test]
fn close_deletes_every_file_and_refuses_what_comes_after() {
    // A graceful stop must not leave (64 MiB) segment files until the next
    // start: the buffer is ephemeral, so closing it deletes segments and
    // spares, and a spare made off the shard that arrives afterwards (or
    // whose buffer is gone) deletes itself.
    let tmp = TempDir::new();
    let mut buf = open(&tmp.0, 1 << 20, true);
    let refs: Vec<_> = (0..300)
        .map(|i| buf.append(1, &message(i, 1000)).unwrap())
        .collect();
    let active = refs.last().unwrap().segment;
    for r in refs.iter().filter(|r| r.segment != active) {
        buf.release(*r);
    }
    buf.flush().unwrap();
    assert!(buf.stats().segments >= 2, "segments and spares on disk");
    assert!(!segment_files(&tmp.0).is_empty());
    buf.close();
    assert_eq!(segment_files(&tmp.0), Vec::<PathBuf>::new());
    assert!(matches!(
        buf.append(1, &message(0, 10)),
        Err(BufferError::Closed)
    ));
    assert!(matches!(buf.read(refs[299], 1), Err(BufferError::Closed)));
    assert!(buf.spare_request().is_none(), "no new files once closed");
    // A spare made off the shard before the close arrives late.
    let late = tmp.0.join("shard-0").join("late.smq");
    buf.install_spare(SegmentFile::create(&late, SEGMENT_BYTES));
    assert!(!buf.off_shard_work());
    assert!(!late.exists(), "a late spare is deleted, not kept");
    // One whose buffer is gone deletes itself.
    drop(buf);
    let orphan = tmp.0.join("shard-0").join("orphan.smq");
    drop(SegmentFile::create(&orphan, SEGMENT_BYTES).unwrap());
    assert_eq!(segment_files(&tmp.0), Vec::<PathBuf>::new());
}

#[test]
fn files_handed_to_the_deleter_are_off_shard_work_until_deleted() {
    let tmp = TempDir::new();
    let mut buf = open(&tmp.0, 1 << 20, true);
    let doomed = collect_doomed(&mut buf);
    let refs: Vec<_> = (0..400)
        .map(|i| buf.append(1, &message(i, 1000)).unwrap())
        .collect();
    let active = refs.last().unwrap().segment;
    for r in refs.iter().filter(|r| r.segment != active) {
        buf.release(*r);
    }
    assert!(!doomed.borrow().is_empty());
    buf.close();
    assert!(buf.off_shard_work(), "the deleter still holds files");
    assert!(!segment_files(&tmp.0).is_empty());
    doomed.borrow_mut().clear();
    assert!(!buf.off_shard_work());
    assert_eq!(segment_files(&tmp.0), Vec::<PathBuf>::new());
}
