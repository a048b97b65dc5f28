//! The vendored glommio's multishot read polls (vendor/glommio/PATCHED.md
//! change 12): a stream waits for data on one poll that stays armed across
//! its completions, and is armed again where the kernel ends it (here, by
//! overflowing the completion queue, which ends a multishot request that
//! cannot post). No wake-up may be lost either way, and the end of a stream
//! that came with its last data is still read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};

/// Which read path a test ran: the tests hold for both, but only the
/// multishot one is this file's subject (Linux 6.1+, and not switched off).
fn note_path() {
    if !glommio::net::multishot_read_polls() {
        eprintln!("note: one-shot read polls here (kernel before 6.1 or GLOMMIO_MULTISHOT_POLL=0)");
    }
}

/// A ring depth of 16: completion queues of 32.
const RING_DEPTH: usize = 16;
const STREAMS: usize = 200;
const ROUNDS: usize = 3;

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

/// Rounds of 200 streams written at once into completion queues of 32: the
/// first round overflows the queue (which ends the polls that could not
/// post), and every later round must find each reader's poll armed again.
#[test]
fn readers_whose_polls_the_kernel_ended_are_woken_in_later_rounds() {
    note_path();
    let per_round = glommio::LocalExecutorBuilder::default()
        .ring_depth(RING_DEPTH)
        .spawn(|| async move {
            let done: Rc<Vec<Cell<usize>>> = Rc::new((0..ROUNDS).map(|_| Cell::new(0)).collect());
            let mut peers = Vec::with_capacity(STREAMS);
            for _ in 0..STREAMS {
                let (mut ours, theirs) = glommio::net::UnixStream::pair().unwrap();
                peers.push(theirs);
                let done = done.clone();
                glommio::spawn_local(async move {
                    let mut byte = [0u8; 1];
                    for round in 0..ROUNDS {
                        ours.read_exact(&mut byte).await.unwrap();
                        assert_eq!(usize::from(byte[0]), round);
                        done[round].set(done[round].get() + 1);
                    }
                })
                .detach();
            }
            let mut per_round = Vec::with_capacity(ROUNDS);
            for round in 0..ROUNDS {
                // Let every reader wait (and every poll be submitted).
                glommio::timer::sleep(Duration::from_millis(200)).await;
                for peer in &mut peers {
                    peer.write_all(&[round as u8]).await.unwrap();
                }
                // Busy until the round is read; bounded, so a lost wake-up
                // fails the count below instead of hanging.
                let deadline = Instant::now() + Duration::from_secs(20);
                while done[round].get() < STREAMS && Instant::now() < deadline {
                    futures_lite::future::yield_now().await;
                }
                per_round.push(done[round].get());
            }
            per_round
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(per_round, vec![STREAMS; ROUNDS], "readers woken per round");
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
