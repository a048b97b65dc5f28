//! The vendored glommio's multishot read polls (vendor/glommio/PATCHED.md
//! change 12): a stream waits for data on one poll that stays armed across
//! its completions (polls the kernel ends are armed again:
//! `ring_overflow.rs`). No wake-up may be lost, and the end of a stream
//! that came with its last data is still read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};

/// Which read path a test ran: the tests hold for both, but only the
/// multishot one is this file's subject (Linux 6.1+, and not switched off).
fn note_path() {
    if !glommio::net::multishot_read_polls() {
        eprintln!("note: one-shot read polls here (kernel before 6.1 or GLOMMIO_MULTISHOT_POLL=0)");
    }
}

/// Many reads on one stream, each of which first finds nothing and waits:
/// the reader is woken by the same poll every time.
#[test]
fn one_stream_read_a_thousand_times_sees_every_byte_in_order() {
    note_path();
    let got = glommio::LocalExecutorBuilder::default()
        .spawn(|| async move {
            let (mut ours, mut theirs) = glommio::net::UnixStream::pair().unwrap();
            let reader = glommio::spawn_local(async move {
                let mut seen = Vec::with_capacity(1000);
                let mut byte = [0u8; 1];
                for _ in 0..1000 {
                    ours.read_exact(&mut byte).await.unwrap();
                    seen.push(byte[0]);
                }
                seen
            });
            for i in 0..1000u32 {
                // Sleep so the reader has found the socket empty and waits.
                if i % 100 == 0 {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                } else {
                    futures_lite::future::yield_now().await;
                }
                theirs.write_all(&[(i % 251) as u8]).await.unwrap();
            }
            reader.await
        })
        .unwrap()
        .join()
        .unwrap();
    let want: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(got, want);
}

/// A peer that writes and closes before the reader runs: its data and its
/// FIN have both woken the socket before one read, which returns the data
/// alone (`recv` stops at a FIN). The next read must still see the end of
/// the stream, and the one after it too, over TCP and over a Unix socket.
#[test]
fn the_end_of_a_stream_that_came_with_its_last_data_is_read() {
    note_path();
    let reads = glommio::LocalExecutorBuilder::default()
        .spawn(|| async move {
            let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let client = glommio::net::TcpStream::connect(addr).await.unwrap();
            let server = listener.accept().await.unwrap();
            let tcp = read_after_write_and_close(server, client).await;
            let (ours, theirs) = glommio::net::UnixStream::pair().unwrap();
            let unix = read_after_write_and_close(ours, theirs).await;
            vec![tcp, unix]
        })
        .unwrap()
        .join()
        .unwrap();
    let want = vec![5usize, 0, 0];
    assert_eq!(reads, vec![want.clone(), want], "bytes per read: TCP, Unix");
}

/// Writes 5 bytes to `theirs` and closes it while a read on `ours` waits,
/// then reads `ours` three times; a read that waits 5 s counts as 99.
async fn read_after_write_and_close<A, B>(mut ours: A, mut theirs: B) -> Vec<usize>
where
    A: futures_lite::AsyncRead + Unpin + 'static,
    B: futures_lite::AsyncWrite + Unpin,
{
    let reader = glommio::spawn_local(async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            let read = async { ours.read(&mut buf).await.unwrap() };
            let stuck = async {
                glommio::timer::sleep(Duration::from_secs(5)).await;
                99
            };
            got.push(futures_lite::future::or(read, stuck).await);
        }
        got
    });
    // The reader has found nothing and waits on its (submitted) poll.
    glommio::timer::sleep(Duration::from_millis(100)).await;
    theirs.write_all(b"hello").await.unwrap();
    theirs.close().await.unwrap();
    drop(theirs);
    reader.await
}
