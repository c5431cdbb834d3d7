//! Generates the gRPC code for `proto/` with a vendored protoc, so that a machine with only
//! the Rust toolchain builds the crate.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("portcullis_descriptor.bin"))
        // Every Check carries a dozen or so headers: a B-tree takes them without hashing
        // each name and rehashing as it grows (a third of decoding a CheckRequest).
        .btree_map(".envoy.service.auth.v3.AttributeContext.HttpRequest.headers")
        .compile_protos(
            &[
                "proto/portcullis/v1/portcullis.proto",
                "proto/envoy/service/auth/v3/external_auth.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
