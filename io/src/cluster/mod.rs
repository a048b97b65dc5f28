//! The cluster at run time (issue 17, docs/CLUSTER.md). Built so far: node
//! links (`link`). The broker does not start a cluster yet.

pub mod link;
