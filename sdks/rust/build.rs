//! Generates the `are.v1` messages and gRPC clients from `../../proto` at
//! build time, with a protoc binary vendored from crates.io (no system protoc).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let dir = root.join("are/v1");
    let mut protos: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    protos.sort();
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    println!("cargo:rerun-if-changed={}", dir.display());
    tonic_build::configure()
        .build_server(false)
        // WorkerService has an RPC named Connect, which would clash with the
        // generated transport constructor; clients are built from a Channel.
        .build_transport(false)
        .compile_protos(&protos, &[root])?;
    Ok(())
}
