//! Adds libdevicestream's directory (from devicestream-sys, `DEP_DEVICESTREAM_LIB_DIR`) as an
//! rpath of this crate's tests and examples, so they run without LD_LIBRARY_PATH. A VMM that
//! depends on this crate does the same in its own build script, or installs the library where
//! the dynamic loader looks.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_DEVICESTREAM_LIB_DIR");
    if let Ok(dir) = std::env::var("DEP_DEVICESTREAM_LIB_DIR") {
        // Applies to what this package links: its tests, examples and doctests.
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
