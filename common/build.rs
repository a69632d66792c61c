fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../proto/framewise.proto");
    tonic_prost_build::configure().compile_protos(&["../proto/framewise.proto"], &["../proto"])?;
    Ok(())
}
