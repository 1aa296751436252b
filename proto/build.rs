//! Generates the tonic/prost code for `credbroker/v1/*.proto`.
//!
//! A fresh machine has no `protoc`; unless `PROTOC` is set we use the one
//! vendored by `protoc-bin-vendored`, so the build works anywhere cargo does.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded; nothing else reads the
        // environment concurrently.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    let protos = [
        "credbroker/v1/common.proto",
        "credbroker/v1/node.proto",
        "credbroker/v1/workload.proto",
        "credbroker/v1/admin.proto",
        "spiffe/workload.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    // Undecodable requests are INVALID_ARGUMENT (see src/codec.rs).
    tonic_prost_build::configure()
        .codec_path("crate::codec::ProtoCodec")
        .compile_protos(&protos, &["."])?;
    Ok(())
}
