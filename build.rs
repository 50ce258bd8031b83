//! Compiles `proto/` with protox (a pure-Rust protobuf compiler), so building needs no system
//! `protoc`. The encoded descriptor set is written to `OUT_DIR` for server reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/tokenledger/v1/ledger.proto"];
    println!("cargo:rerun-if-changed=proto");
    // `sqlx::migrate!` cannot ask to be rebuilt when a migration is added; this does.
    println!("cargo:rerun-if-changed=migrations");
    let fds = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("ledger_descriptor.bin"), fds.encode_to_vec())?;
    // Type names (`prost::Name`) let the CLI find each message's descriptor to print it as
    // canonical proto JSON.
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds_with_config(fds, config)?;
    Ok(())
}
