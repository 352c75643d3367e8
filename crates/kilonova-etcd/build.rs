//! Compiles proto/etcd.proto (the part of etcd's gRPC API we use) with protox
//! (pure Rust) into prost messages and tonic clients: no `protoc` needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/etcd.proto");
    let fds = protox::compile(["etcd.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
