//! Compiles `proto/jobworker/v1/jobworker.proto` with protox (pure Rust, so no
//! `protoc` is needed on the build machine) and generates the tonic client and
//! server, plus the encoded file descriptor set for server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/jobworker/v1/jobworker.proto";
    println!("cargo:rerun-if-changed={proto}");

    let fds = protox::compile([proto], ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("jobworker_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // Output bytes are shared buffers, so the gateway hands one job's output
    // to each of its followers without a copy.
    tonic_prost_build::configure()
        .bytes(".jobworker.v1.Output.data")
        .compile_fds(fds)?;
    Ok(())
}
