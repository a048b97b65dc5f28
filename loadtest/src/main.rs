//! `shardmq-loadtest` (built in the load-test issue).

fn main() {
    eprintln!("shardmq-loadtest: not built yet");
    std::process::exit(2);
}
