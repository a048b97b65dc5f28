//! The cluster's sans-io protocols (issue 17, docs/CLUSTER.md). Built so far:
//! route replication between nodes (`routes`) and the frames a node link
//! carries (`frame`). Nothing here is wired to the runtime yet: node link
//! sockets, membership and the client-id registry come next.

pub mod frame;
pub mod routes;

pub use frame::{Frame, FrameError, LINK_VERSION};
pub use routes::{Incarnation, LocalRoutes, NodeId, RemoteRoutes, RouteMsg, RouteOp};
