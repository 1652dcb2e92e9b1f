//! Many sessions in one process leave nothing behind: every handle is freed once (devices are
//! released once and dropped once), and no fd or thread outlives its session. One test in its
//! own binary, so no other test's sessions run meanwhile.

mod common;

use common::*;
use devicestream::*;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

fn one_session(key: &Key, start: bool) {
    let opts = Options::new().psk(key.clone()).timeout(Duration::from_secs(10));
    let s = VmmDevice::source("leak", 1 << 20, 4096, 0, ConfigFormat::Rust, PanicIn::Nothing);
    let d = VmmDevice::destination("leak", 1 << 20, 4096, ConfigFormat::Rust);
    let mut dst = Destination::new(&[Device::from_arc(d).unwrap()], &opts).unwrap();
    let mut src = Source::new(&[Device::from_arc(s).unwrap()], &opts).unwrap();
    let handle = src.cancel_handle();
    if start {
        let port = dst.listen("127.0.0.1:0", Some(Box::new(|_: &Event| {}))).unwrap();
        src.connect(&format!("127.0.0.1:{port}"), Some(Box::new(|_: &Event| {}))).unwrap();
        let r = src.wait_timeout(Some(Duration::from_secs(30))).unwrap().unwrap();
        assert!(r.completed && r.digests_verified);
        dst.wait_timeout(Some(Duration::from_secs(30))).unwrap().unwrap();
    }
    drop(src);
    drop(dst);
    assert_eq!(handle.cancel(), CancelOutcome::NotRunning);
}

#[test]
fn sessions_leak_no_handles_fds_or_threads() {
    let dir = TempDir::new("leaks");
    let key = Key::generate_file(dir.0.join("key")).unwrap();
    // Warm up: whatever the library keeps for the process's life (its runtime) exists now.
    one_session(&key, true);
    let fds = count("/proc/self/fd");
    let threads = count("/proc/self/task");
    let releases = RELEASES.load(Ordering::SeqCst);
    const N: u64 = 40;
    for i in 0..N {
        one_session(&key, i % 4 != 3); // every fourth session is made and dropped unstarted
    }
    assert_eq!(RELEASES.load(Ordering::SeqCst) - releases, 2 * N, "each device is released once");
    assert_eq!(LIVE_DEVICES.load(Ordering::SeqCst), 0, "every device value is dropped");
    assert!(eventually(Duration::from_secs(5), || count("/proc/self/fd") <= fds), "fds: {} before, {} after", fds, count("/proc/self/fd"));
    assert!(
        eventually(Duration::from_secs(5), || count("/proc/self/task") <= threads),
        "threads: {} before, {} after",
        threads,
        count("/proc/self/task")
    );
}
