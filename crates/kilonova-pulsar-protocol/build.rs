//! Compiles proto/PulsarApi.proto and proto/PulsarMarkers.proto with protox
//! (pure Rust): no `protoc` needed.

/// `FieldDescriptorProto.Type.TYPE_MESSAGE`.
const TYPE_MESSAGE: i32 = 11;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/PulsarApi.proto");
    println!("cargo:rerun-if-changed=proto/PulsarMarkers.proto");
    let fds = protox::compile(["PulsarApi.proto", "PulsarMarkers.proto"], ["proto"])?;
    // BaseCommand has one optional field per command type: inline they make it
    // ~3.8 KB, zeroed and copied on every decode, build and move. Boxed, it is
    // a few hundred bytes and only the command present is allocated.
    let boxed: Vec<String> = fds
        .file
        .iter()
        .flat_map(|f| &f.message_type)
        .filter(|m| m.name() == "BaseCommand")
        .flat_map(|m| &m.field)
        .filter(|f| f.r#type == Some(TYPE_MESSAGE))
        .map(|f| format!(".pulsar.proto.BaseCommand.{}", f.name()))
        .collect();
    let mut config = prost_build::Config::new();
    config.bytes(["."]);
    for path in &boxed {
        config.boxed(path);
    }
    config.compile_fds(fds)?;
    Ok(())
}
