//! Compiles `proto/sandpit/v1/*.proto` with the protoc shipped in
//! `protoc-bin-vendored` (a fresh machine has no system protoc), then derives
//! proto3-JSON serde impls with pbjson for the CLI's `--json`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = out.join("sandpit_descriptor.bin");
    let protos = [
        "proto/sandpit/v1/sandbox.proto",
        "proto/sandpit/v1/profile.proto",
        "proto/sandpit/v1/register.proto",
        "proto/sandpit/v1/audit.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptors)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_protos(&protos, &["proto"])?;
    let set = std::fs::read(&descriptors)?;
    pbjson_build::Builder::new().register_descriptors(&set)?.build(&[".sandpit"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
