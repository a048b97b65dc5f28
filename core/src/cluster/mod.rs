//! The cluster's sans-io protocols (issue 17, docs/CLUSTER.md): route
//! replication between nodes (`routes`), the client-id registry's state
//! machine (`registry`), the frames a node link carries
//! (`frame`), and the receiving end's rule for messages a new link carries
//! again (`already_routed`). A shard's own part is `broker::cluster`.

pub mod clock;
pub mod frame;
pub mod registry;
pub mod routes;

pub use frame::{Frame, FrameError, LINK_VERSION};
pub use routes::{Incarnation, LocalRoutes, NodeId, RemoteRoutes, RouteMsg, RouteOp};

/// Of a frame's `len` messages numbered from `first_seq` in one stream (a
/// peer's shard, one life of the peer), how many at the front this node
/// already routed, `done` being the highest number of the stream routed so
/// far; `done` moves on to the frame's last. A new link carries again what
/// the peer had no acknowledgement for, so a QoS 2 message would otherwise
/// be delivered twice. Numbers a hostile peer picks cannot overflow.
pub fn already_routed(done: &mut u64, first_seq: u64, len: usize) -> usize {
    let skip = done
        .checked_sub(first_seq)
        .map_or(0, |behind| behind.saturating_add(1));
    let skip = usize::try_from(skip).unwrap_or(usize::MAX).min(len);
    if skip < len {
        let last = first_seq.saturating_add(len as u64 - 1);
        *done = last.max(*done);
    }
    skip
}

#[cfg(test)]
mod tests {
    use super::already_routed;

    /// What of a frame of `n` numbered from `first` is routed.
    fn routed(done: &mut u64, first: u64, n: usize) -> Vec<u64> {
        let skip = already_routed(done, first, n);
        (first..).take(n).skip(skip).collect()
    }

    #[test]
    fn a_stream_routes_each_number_once_across_links() {
        let mut done = 0;
        assert_eq!(routed(&mut done, 1, 3), vec![1, 2, 3]);
        // The next link carries 2..=6 again: 2 and 3 were routed.
        assert_eq!(routed(&mut done, 2, 5), vec![4, 5, 6]);
        // The old link's late frame changes nothing.
        assert_eq!(routed(&mut done, 3, 2), Vec::<u64>::new());
        assert_eq!(done, 6);
        // A hostile number cannot overflow.
        let mut done = 0;
        assert_eq!(already_routed(&mut done, u64::MAX, 1), 0);
        assert_eq!(done, u64::MAX);
        assert_eq!(already_routed(&mut done, u64::MAX, 3), 1);
    }
}
