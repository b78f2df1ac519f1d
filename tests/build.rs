//! Writes the random programs of `tests/tests/random_programs.rs` (a few dozen, eight
//! of them module programs whose lifted `grad!` is differentiated again, from a fixed
//! seed; `cargo run -p adjoint-fuzz --release` runs thousands).

fn main() {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src = adjoint_fuzz::program_file(2026, 48, 8, false);
    std::fs::write(out.join("random_programs.rs"), src).expect("OUT_DIR is writable");
    println!("cargo::rerun-if-changed=build.rs");
}
