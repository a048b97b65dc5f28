//! The cluster at run time (issue 17, docs/CLUSTER.md): node links
//! (`link`) and the tasks that keep them up on every shard (`runtime`).

pub mod control;
pub mod link;
pub mod runtime;
