//! Key files are read as `devstream --psk-file` reads them: private to their owner, hex only.

mod common;

use common::*;
use devicestream::*;
use std::os::unix::fs::PermissionsExt;

fn write(path: &std::path::Path, content: &[u8], mode: u32) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn key_files_are_strict() {
    let dir = TempDir::new("keys");
    let path = dir.0.join("key");
    let hex = "0a1B".repeat(16);
    // Accepted: whitespace around the digits, 0600 or 0400; the same key as a generated file.
    write(&path, format!(" \n{hex}\r\n").as_bytes(), 0o600);
    Key::from_file(&path).expect("a private hex key");
    write(&path, hex.as_bytes(), 0o400);
    Key::from_file(&path).expect("a read-only private hex key");
    let generated = dir.0.join("generated");
    Key::generate_file(&generated).unwrap();
    Key::from_file(&generated).expect("a generated key reads back");
    // Open to others: refused, with the chmod in the message and the hint.
    for mode in [0o644, 0o640, 0o604, 0o620] {
        write(&path, hex.as_bytes(), mode);
        let e = Key::from_file(&path).err().expect("an open key file");
        assert_eq!(e.code, ErrorCode::Usage);
        assert!(e.message.contains("chmod 600"), "{}", e.message);
        assert!(e.hint.as_deref().unwrap_or("").contains("chmod 600"), "{:?}", e.hint);
    }
    // Not a key: empty, newlines only, raw bytes, inner whitespace, short, odd.
    let half = &hex[..32];
    for (content, says) in [
        (Vec::new(), "holds 0 hex digits"),
        (vec![b'\n'; 40], "holds 0 hex digits"),
        (vec![0xfe; 40], "other than hex digits"),
        (format!("{half} {half}").into_bytes(), "other than hex digits (at byte 32)"),
        (hex[..62].as_bytes().to_vec(), "holds 62 hex digits"),
        (format!("{hex}a").into_bytes(), "holds 65 hex digits"),
    ] {
        write(&path, &content, 0o600);
        let e = Key::from_file(&path).err().expect("not a key");
        assert_eq!(e.code, ErrorCode::Usage);
        assert!(e.message.contains(says), "{} (wanted {says})", e.message);
        assert!(!e.message.contains("0a1B"), "the message quotes the key: {}", e.message);
    }
}
