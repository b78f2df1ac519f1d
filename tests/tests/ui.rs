//! Compile errors a user can make, each with the message they see.
//! Regenerate the expected output with `TRYBUILD=overwrite cargo test -p adjoint-tests --test ui`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/*.rs");
}
