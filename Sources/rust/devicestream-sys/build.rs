//! Links libdevicestream and checks the C layout of devicestream.h.
//!
//! - `DEVICESTREAM_LIB_DIR`: where libdevicestream.so(.1) is (default `<repo>/.build/cabi/lib`,
//!   which `Tests/CABI/build-library.sh` fills). It is linked from there and added as an rpath of
//!   this crate's tests, and passed on to dependents as `DEP_DEVICESTREAM_LIB_DIR`.
//! - `DEVICESTREAM_INCLUDE_DIR`: where devicestream.h is (default the checked-in
//!   `<repo>/Sources/CDeviceStream/include`). `layout_probe.c` is compiled against it with `$CC`
//!   (default `cc`) and run; its output, the C compiler's sizes, offsets and constants, becomes
//!   `$OUT_DIR/c_layout.rs` for `tests/layout.rs`.
use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    // Sources/rust/devicestream-sys -> the repository root.
    let repo = manifest.join("../../..");
    println!("cargo:rerun-if-env-changed=DEVICESTREAM_LIB_DIR");
    println!("cargo:rerun-if-env-changed=DEVICESTREAM_INCLUDE_DIR");
    println!("cargo:rerun-if-env-changed=CC");
    println!("cargo:rerun-if-changed=layout_probe.c");
    println!("cargo:rerun-if-changed=build.rs");

    let lib_dir = env::var_os("DEVICESTREAM_LIB_DIR").map(PathBuf::from).unwrap_or_else(|| repo.join(".build/cabi/lib"));
    let lib_dir = lib_dir.canonicalize().unwrap_or(lib_dir);
    if !lib_dir.join("libdevicestream.so").exists() && !lib_dir.join("libdevicestream.so.1").exists() {
        println!(
            "cargo:warning=libdevicestream.so is not in {}: build it with Tests/CABI/build-library.sh or set DEVICESTREAM_LIB_DIR",
            lib_dir.display()
        );
    }
    println!("cargo:rerun-if-changed={}", lib_dir.join("libdevicestream.so.1").display());
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=dylib=devicestream");
    // Only this package's tests get the rpath from here; dependents read lib_dir (below).
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    println!("cargo:lib_dir={}", lib_dir.display());

    let include = env::var_os("DEVICESTREAM_INCLUDE_DIR").map(PathBuf::from).unwrap_or_else(|| repo.join("Sources/CDeviceStream/include"));
    let include = include.canonicalize().unwrap_or(include);
    let header = include.join("devicestream.h");
    println!("cargo:rerun-if-changed={}", header.display());
    println!("cargo:rustc-env=DEVICESTREAM_HEADER={}", header.display());

    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let probe = out.join("layout_probe");
    let cc = env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .arg("-std=c11")
        .arg("-I")
        .arg(&include)
        .arg(manifest.join("layout_probe.c"))
        .arg("-o")
        .arg(&probe)
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}` for the layout probe: {e} (set CC)"));
    assert!(status.success(), "`{cc}` failed to compile layout_probe.c against {}", header.display());
    let output = Command::new(&probe).output().expect("cannot run the layout probe");
    assert!(output.status.success(), "the layout probe failed");
    std::fs::write(out.join("c_layout.rs"), output.stdout).unwrap();
}
