//! The `shardmq` binary (the server lands with the server issue).

fn main() {
    eprintln!("shardmq: the server is not built yet; see README.md");
    std::process::exit(2);
}
