//! The cluster's sans-io protocols (issue 17, docs/CLUSTER.md). Built so far:
//! route replication between nodes (`routes`). Nothing here is wired to the
//! runtime yet: node links, membership and the client-id registry come next.

pub mod routes;

pub use routes::{Incarnation, LocalRoutes, NodeId, RemoteRoutes, RouteMsg, RouteOp};
