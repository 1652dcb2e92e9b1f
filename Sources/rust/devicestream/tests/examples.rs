//! Runs the two examples as a user would: the destination makes the key and listens, the source
//! reads the key and migrates to it over loopback. `cargo test` builds the examples before it
//! runs the tests; run alone (`cargo test --test examples`), build them first
//! (`cargo build --examples`).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// target/<profile>/examples/NAME, next to this test's deps/ directory.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join("examples").join(name);
    assert!(p.exists(), "{} is missing: build the examples (`cargo build --offline --examples`)", p.display());
    p
}

#[test]
fn source_and_destination_examples_migrate_over_loopback() {
    let dir = common::TempDir::new("examples");
    let key = dir.0.join("migration.key");
    let mut dst =
        Command::new(example("destination")).args(["127.0.0.1:0", key.to_str().unwrap(), "16"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(dst.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("destination said {line:?}")).to_string();

    // The key the destination made: 32 random bytes as hex, readable by its owner only.
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&key).unwrap().trim().len(), 64);

    let src = Command::new(example("source")).args([addr.as_str(), key.to_str().unwrap(), "16"]).output().unwrap();
    let src_out = String::from_utf8_lossy(&src.stdout);
    let status = dst.wait().unwrap();
    let mut dst_out = String::new();
    out.read_to_string(&mut dst_out).unwrap();
    assert!(src.status.success(), "source failed:\n{src_out}{}", String::from_utf8_lossy(&src.stderr));
    assert!(status.success(), "destination failed:\n{dst_out}");
    assert!(src_out.contains("digests verified: true"), "{src_out}");
    assert!(dst_out.contains("device Running") && dst_out.contains("digests verified: true"), "{dst_out}");
}
