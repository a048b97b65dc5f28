//! shardmq-io: the only crate that knows glommio, sockets, CPUs and files.
