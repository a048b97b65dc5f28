//! shardmq-loadtest: a load harness for MQTT 3.1.1/5.0 brokers. A minimal
//! client on the shardmq-core codec drives named scenarios; every message
//! carries a timestamp and a sequence number so latency is measured end to
//! end and loss, duplicates and reordering are counted, not assumed.
//! `compare` runs one scenario against several brokers, interleaved;
//! `encryption` runs a broker config with encryptInternalTraffic on and off;
//! `crash` kills the broker with SIGKILL and checks what it acknowledged;
//! `echo-floor` and `null-broker` measure what the harness and the kernel
//! cost without a broker's work.

pub mod cli;
pub mod client;
pub mod compare;
pub mod conns;
pub mod crash;
pub mod ctx;
pub mod echo;
pub mod encryption;
pub mod lane;
pub mod null_broker;
pub mod pacer;
pub mod payload;
pub mod procstat;
pub mod report;
pub mod run;
pub mod spec;
pub mod svg;
pub mod tracker;

pub use report::RunReport;
pub use run::run;
pub use spec::{RunSpec, Scenario, StampMode, Target, TlsSpec};
