fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../proto/onnx.proto");
    prost_build::compile_protos(&["../proto/onnx.proto"], &["../proto"])?;
    Ok(())
}
