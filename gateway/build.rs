//! Compiles Dapr's gRPC interface (`proto/`, pinned from dapr/dapr v1.18.3) with protox, a
//! pure-Rust protobuf compiler, so building edgecar needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/dapr/proto/runtime/v1/dapr.proto",
        "proto/dapr/proto/runtime/v1/appcallback.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
