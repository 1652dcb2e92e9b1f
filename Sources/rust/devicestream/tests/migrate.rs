//! A Rust "VMM" migrates its own device (memory in an memfd, dirtied by a thread while it runs)
//! through the safe crate: to a Rust destination in the same process, and to
//! `devstream receive --device sim:size=...` in a child process. Plus cancel from another thread,
//! a panicking device callback and a panicking event handler.

mod common;

use common::*;
use devicestream::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SIZE: usize = 32 << 20;
const CHUNK: usize = 4096;
const LIMIT: Option<Duration> = Some(Duration::from_secs(60));

fn options(key: &Key) -> Options {
    Options::new()
        .connections(2)
        .psk(key.clone())
        .downtime_limit(Duration::from_millis(300))
        .policy(Policy::Switchover)
        .deadline(Some(Duration::from_secs(30)))
        .timeout(Duration::from_secs(10))
}

/// Events seen by a handler, for the assertions.
fn recorder() -> (Arc<Mutex<Vec<Event>>>, EventHandler) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    (seen, Box::new(move |e: &Event| s.lock().unwrap().push(e.clone())))
}

#[test]
fn abi_version_matches_the_crate() {
    assert!(abi_compatible(), "library ABI {:?}", abi_version());
}

#[test]
fn rust_vmm_migrates_to_a_rust_destination() {
    let dir = TempDir::new("rust-dest");
    let key = Key::generate_file(dir.0.join("key")).unwrap();
    let vmm_src = VmmDevice::source("vmm-gpu0", SIZE, CHUNK, 16, ConfigFormat::Rust, PanicIn::Nothing);
    let vmm_dst = VmmDevice::destination("vmm-gpu0", SIZE, CHUNK, ConfigFormat::Rust);

    let mut dst = Destination::new(&[Device::from_arc(vmm_dst.clone()).unwrap()], &options(&key)).unwrap();
    let (dst_events, dst_handler) = recorder();
    let port = dst.listen("127.0.0.1:0", Some(dst_handler)).unwrap();
    assert_ne!(port, 0);

    let mut src = Source::new(&[Device::from_arc(vmm_src.clone()).unwrap()], &options(&key)).unwrap();
    let (src_events, src_handler) = recorder();
    src.connect(&format!("127.0.0.1:{port}"), Some(src_handler)).unwrap();
    let report = src.wait_timeout(LIMIT).unwrap().expect("the source finished within a minute");
    let dst_report = dst.wait_timeout(LIMIT).unwrap().expect("the destination finished within a minute");

    assert!(report.completed && dst_report.completed, "{report:?} {dst_report:?}");
    assert!(report.digests_verified, "source report: {report:?}");
    assert!(dst_report.digests_verified, "destination report: {dst_report:?}");
    assert_eq!((report.protection, dst_report.protection), (Protection::TlsPsk, Protection::TlsPsk));
    assert_eq!(vmm_src.memory_digest(), vmm_dst.memory_digest(), "the memories differ");
    assert!(vmm_src.writes.load(std::sync::atomic::Ordering::Relaxed) > 0, "the dirtier never ran");
    assert!(report.iterations >= 1 && report.precopy_bytes >= SIZE as u64, "{report:?}");
    assert!(report.downtime.is_some(), "{report:?}");
    assert_eq!(report.error_code, None);
    // The source never runs again after the commit; the destination runs.
    assert!(!vmm_src.state().is_running(), "source ends in {:?}", vmm_src.state());
    assert_eq!(vmm_dst.state(), DeviceState::Running);
    assert!(!vmm_dst.transitions.lock().unwrap().is_empty());

    let src_events = src_events.lock().unwrap();
    assert!(src_events.iter().any(|e| matches!(e, Event::Iteration { .. })), "{src_events:?}");
    assert!(src_events.iter().any(|e| matches!(e, Event::Handover { phase: HandoverPhase::CommitSent })), "{src_events:?}");
    let dst_events = dst_events.lock().unwrap();
    assert!(dst_events.iter().any(|e| matches!(e, Event::Handover { phase: HandoverPhase::Running })), "{dst_events:?}");
    assert_eq!(src.stats().phase, SessionPhase::Completed);
    assert_eq!(src.report(), Some(report));
}

/// `devstream`: $DEVSTREAM, else <repo>/.build/release/devstream.
fn devstream() -> std::path::PathBuf {
    let p = std::env::var_os("DEVSTREAM").map(std::path::PathBuf::from).unwrap_or_else(|| repo_root().join(".build/release/devstream"));
    assert!(p.exists(), "{} does not exist: build it with `swift build -c release --product devstream` (or set DEVSTREAM)", p.display());
    p
}

#[test]
fn rust_vmm_migrates_to_devstream_receive() {
    let dir = TempDir::new("cli-dest");
    let key_path = dir.0.join("key");
    let key = Key::generate_file(&key_path).unwrap();
    let mut child = Command::new(devstream())
        .args(["receive", "--listen", "127.0.0.1:0", "--device", &format!("sim:size={SIZE}"), "--timeout", "10s", "--psk-file"])
        .arg(&key_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("devstream said {line:?}")).to_string();
    // The rest of its output, for the failure message.
    let rest = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });

    // The sim destination digests its memory with XXH3-64, as this device does; its config
    // check wants the sim config blob.
    let vmm = VmmDevice::source("vmm-gpu0", SIZE, CHUNK, 16, ConfigFormat::Sim, PanicIn::Nothing);
    let mut src = Source::new(&[Device::from_arc(vmm.clone()).unwrap()], &options(&key)).unwrap();
    src.connect(&addr, None).unwrap();
    let result = src.wait_timeout(LIMIT);
    let status = child.wait().unwrap();
    let output = rest.join().unwrap();
    let report = result.unwrap().expect("the source finished within a minute");
    assert!(status.success(), "devstream receive failed ({status}):\n{output}");
    assert!(report.completed && report.digests_verified, "{report:?}\ndevstream said:\n{output}");
    assert!(!vmm.state().is_running());
}

#[test]
fn cancel_from_another_thread_leaves_the_source_running() {
    let dir = TempDir::new("cancel");
    let key = Key::generate_file(dir.0.join("key")).unwrap();
    let vmm_src = VmmDevice::source("vmm-nic0", SIZE, CHUNK, 16, ConfigFormat::Rust, PanicIn::Nothing);
    let vmm_dst = VmmDevice::destination("vmm-nic0", SIZE, CHUNK, ConfigFormat::Rust);
    // External switchover that never comes: pre-copy goes on until the cancel.
    let opts = options(&key).external_switchover(true).policy(Policy::Wait);
    let mut dst = Destination::new(&[Device::from_arc(vmm_dst.clone()).unwrap()], &opts).unwrap();
    let port = dst.listen("127.0.0.1:0", None).unwrap();
    let mut src = Source::new(&[Device::from_arc(vmm_src.clone()).unwrap()], &opts).unwrap();
    let (events, handler) = recorder();
    src.connect(&format!("127.0.0.1:{port}"), Some(handler)).unwrap();

    assert!(eventually(Duration::from_secs(30), || src.stats().iterations >= 2), "pre-copy never got going: {:?}", src.stats());
    let handle = src.cancel_handle();
    let canceller = std::thread::spawn(move || handle.cancel());
    assert_eq!(canceller.join().unwrap(), CancelOutcome::Cancelled);

    let err = src.wait_timeout(LIMIT).unwrap_err();
    assert_eq!(err.code, ErrorCode::Cancelled, "{err}");
    let dst_err = dst.wait_timeout(LIMIT).unwrap_err();
    assert_ne!(dst_err.code, ErrorCode::Usage, "{dst_err}");
    let report = src.report().expect("a failed session has a report");
    assert!(!report.completed);
    assert_eq!(report.error_code, Some(ErrorCode::Cancelled));

    // The source device runs again and is still being written; the destination's never ran.
    assert_eq!(vmm_src.state(), DeviceState::Running);
    let before = vmm_src.writes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(5), || vmm_src.writes.load(std::sync::atomic::Ordering::Relaxed) > before),
        "the source device does not run after the cancel"
    );
    assert!(!vmm_dst.transitions.lock().unwrap().iter().any(|(_, to)| to.is_running()), "the destination device ran");
    assert!(events.lock().unwrap().iter().any(|e| matches!(e, Event::ReadyToSwitchover { .. })) || report.iterations >= 2);
    // A handle outliving its session reaches nothing.
    let late = src.cancel_handle();
    drop(src);
    assert_eq!(late.cancel(), CancelOutcome::NotRunning);
}

fn panicking_source(panic_in: PanicIn) {
    quiet_expected_panics();
    let dir = TempDir::new("panic");
    let key = Key::generate_file(dir.0.join("key")).unwrap();
    let vmm_src = VmmDevice::source("vmm-panics", 8 << 20, CHUNK, 4, ConfigFormat::Rust, panic_in);
    let vmm_dst = VmmDevice::destination("vmm-panics", 8 << 20, CHUNK, ConfigFormat::Rust);
    let mut dst = Destination::new(&[Device::from_arc(vmm_dst.clone()).unwrap()], &options(&key)).unwrap();
    let port = dst.listen("127.0.0.1:0", None).unwrap();
    let device = Device::from_arc(vmm_src.clone()).unwrap();
    let mut src = Source::new(std::slice::from_ref(&device), &options(&key)).unwrap();
    src.connect(&format!("127.0.0.1:{port}"), None).unwrap();

    let err = src.wait_timeout(LIMIT).unwrap_err();
    assert_eq!(err.code, ErrorCode::Device, "{err}");
    assert!(err.message.contains("panicked"), "the error does not name the panic: {err}");
    assert!(dst.wait_timeout(LIMIT).is_err());
    let report = src.report().unwrap();
    assert!(!report.completed);
    assert!(device.take_panic().is_some());
    assert_eq!(device.take_panic(), None, "take_panic clears the record");
    // The source device is back to RUNNING; the destination's never ran.
    assert_eq!(vmm_src.state(), DeviceState::Running);
    assert!(!vmm_dst.transitions.lock().unwrap().iter().any(|(_, to)| to.is_running()));
}

#[test]
fn a_panicking_save_config_fails_the_session_cleanly() {
    panicking_source(PanicIn::SaveConfig);
}

#[test]
fn a_panicking_dirty_bitmap_fails_the_session_cleanly() {
    panicking_source(PanicIn::DirtyBitmapAfter(2));
}

#[test]
fn a_panicking_event_handler_loses_only_its_events() {
    quiet_expected_panics();
    let dir = TempDir::new("panic-events");
    let key = Key::generate_file(dir.0.join("key")).unwrap();
    let vmm_src = VmmDevice::source("vmm-ev", 8 << 20, CHUNK, 0, ConfigFormat::Rust, PanicIn::Nothing);
    let vmm_dst = VmmDevice::destination("vmm-ev", 8 << 20, CHUNK, ConfigFormat::Rust);
    let mut dst = Destination::new(&[Device::from_arc(vmm_dst.clone()).unwrap()], &options(&key)).unwrap();
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = calls.clone();
    let port = dst
        .listen(
            "127.0.0.1:0",
            Some(Box::new(move |e: &Event| {
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                panic!("{EXPECTED_PANIC}the VMM's event handler fails on {e:?}");
            })),
        )
        .unwrap();
    let mut src = Source::new(&[Device::from_arc(vmm_src.clone()).unwrap()], &options(&key)).unwrap();
    src.connect(&format!("127.0.0.1:{port}"), Some(Box::new(|_: &Event| panic!("{EXPECTED_PANIC}and so does the source's")))).unwrap();
    let report = src.wait_timeout(LIMIT).unwrap().unwrap();
    assert!(report.completed && report.digests_verified, "{report:?}");
    dst.wait_timeout(LIMIT).unwrap().unwrap();
    assert!(calls.load(std::sync::atomic::Ordering::Relaxed) > 1, "events stop after the first panic");
}

#[test]
fn sessions_run_over_sockets_the_vmm_connected() {
    // As Cloud Hypervisor does: the VMM connects (or receives over SCM_RIGHTS) the sockets and
    // hands them in; the library takes them.
    let dir = TempDir::new("fds");
    let key = Key::generate_file(dir.0.join("key")).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (mut client_ends, mut server_ends) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        client_ends.push(std::os::fd::OwnedFd::from(std::net::TcpStream::connect(addr).unwrap()));
        server_ends.push(std::os::fd::OwnedFd::from(listener.accept().unwrap().0));
    }
    let vmm_src = VmmDevice::source("vmm-fds", 8 << 20, CHUNK, 4, ConfigFormat::Rust, PanicIn::Nothing);
    let vmm_dst = VmmDevice::destination("vmm-fds", 8 << 20, CHUNK, ConfigFormat::Rust);
    let mut dst = Destination::new(&[Device::from_arc(vmm_dst.clone()).unwrap()], &options(&key)).unwrap();
    dst.attach_fds(server_ends, None).unwrap();
    let mut src = Source::new(&[Device::from_arc(vmm_src.clone()).unwrap()], &options(&key)).unwrap();
    src.attach_fds(client_ends, None).unwrap();
    let report = src.wait_timeout(LIMIT).unwrap().unwrap();
    dst.wait_timeout(LIMIT).unwrap().unwrap();
    assert!(report.completed && report.digests_verified, "{report:?}");
    assert_eq!(vmm_src.memory_digest(), vmm_dst.memory_digest());
    assert_eq!(src.attach_fds(Vec::new(), None).unwrap_err().code, ErrorCode::State);
}

#[test]
fn the_vmm_switches_over_and_resumes_itself() {
    // External switchover (the VMM pauses its vCPUs first, then says go) and a held resume (the
    // destination VMM lets the devices run when it is ready), driven from the test thread by
    // events passed over channels.
    let dir = TempDir::new("controls");
    let key = Key::generate_file(dir.0.join("key")).unwrap();
    let vmm_src = VmmDevice::source("vmm-ctl", 8 << 20, CHUNK, 4, ConfigFormat::Rust, PanicIn::Nothing);
    let vmm_dst = VmmDevice::destination("vmm-ctl", 8 << 20, CHUNK, ConfigFormat::Rust);
    let (dst_tx, dst_rx) = std::sync::mpsc::channel();
    let mut dst =
        Destination::new(&[Device::from_arc(vmm_dst.clone()).unwrap()], &options(&key).hold_resume(Some(Duration::from_secs(20)))).unwrap();
    let port = dst
        .listen(
            "127.0.0.1:0",
            Some(Box::new(move |e: &Event| {
                let _ = dst_tx.send(e.clone());
            })),
        )
        .unwrap();
    let (src_tx, src_rx) = std::sync::mpsc::channel();
    let mut src = Source::new(&[Device::from_arc(vmm_src.clone()).unwrap()], &options(&key).external_switchover(true)).unwrap();
    src.set_external_pending(1 << 20);
    src.connect(
        &format!("127.0.0.1:{port}"),
        Some(Box::new(move |e: &Event| {
            let _ = src_tx.send(e.clone());
        })),
    )
    .unwrap();

    let wait_for = |rx: &std::sync::mpsc::Receiver<Event>, what: &str, f: &dyn Fn(&Event) -> bool| loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(e) if f(&e) => return e,
            Ok(_) => continue,
            Err(_) => panic!("no {what} event"),
        }
    };
    wait_for(&src_rx, "ReadyToSwitchover", &|e| matches!(e, Event::ReadyToSwitchover { .. }));
    assert_eq!(vmm_src.state(), DeviceState::PreCopy, "the source waits in pre-copy for the VMM");
    src.switchover();
    wait_for(&dst_rx, "CommitReceived", &|e| matches!(e, Event::Handover { phase: HandoverPhase::CommitReceived }));
    // Held: committed, loaded, but not running until the VMM says so.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(vmm_dst.state(), DeviceState::Stop);
    dst.resume().unwrap();
    let report = src.wait_timeout(LIMIT).unwrap().unwrap();
    dst.wait_timeout(LIMIT).unwrap().unwrap();
    assert!(report.completed && report.digests_verified, "{report:?}");
    assert_eq!(report.switchover_reason, Some(SwitchoverReason::Requested));
    assert_eq!(vmm_dst.state(), DeviceState::Running);
}

#[test]
fn a_stream_device_migrates_in_order() {
    let dir = TempDir::new("stream");
    let key = Key::generate_file(dir.0.join("key")).unwrap();
    let vmm_src = StreamVmmDevice::source(6 << 20, 4 << 20);
    let vmm_dst = StreamVmmDevice::destination();
    let mut dst = Destination::new(&[Device::from_arc(vmm_dst.clone()).unwrap()], &options(&key)).unwrap();
    let port = dst.listen("127.0.0.1:0", None).unwrap();
    let mut src = Source::new(&[Device::from_arc(vmm_src.clone()).unwrap()], &options(&key)).unwrap();
    src.connect(&format!("127.0.0.1:{port}"), None).unwrap();
    let report = src.wait_timeout(LIMIT).unwrap().unwrap();
    dst.wait_timeout(LIMIT).unwrap().unwrap();
    assert!(report.completed && report.digests_verified, "{report:?}");
    assert_eq!(vmm_src.content_digest(), vmm_dst.content_digest());
    assert!(report.precopy_bytes >= 4 << 20, "{report:?}");
    assert_eq!(vmm_dst.state(), DeviceState::Running);
    assert!(!vmm_src.state().is_running());
}

#[test]
fn bad_options_and_states_are_errors() {
    let dev = Device::from_spec("sim:size=1M", Role::Source).unwrap();
    let e = Source::new(std::slice::from_ref(&dev), &Options::new().connections(0)).err().expect("0 connections");
    assert_eq!(e.code, ErrorCode::Usage);
    assert!(e.message.contains("connections"), "{e}");
    let e = Source::new(std::slice::from_ref(&dev), &Options::new().psk(Key::new(vec![1u8; 8]))).err().expect("a short key");
    assert_eq!(e.code, ErrorCode::Usage);
    assert!(e.hint.is_some(), "{e:?}");
    assert_eq!(Source::new(&[], &Options::new()).err().unwrap().code, ErrorCode::Usage);
    let e = Device::from_spec("nonsense:", Role::Source).unwrap_err();
    assert_ne!(e.message, "", "{e:?}");

    let src = Source::new(&[dev], &Options::new()).unwrap();
    assert_eq!(src.report(), None);
    assert_eq!(src.wait_timeout(Some(Duration::ZERO)).unwrap_err().code, ErrorCode::State);
    let dst = Destination::new(&[Device::from_spec("sim:size=1M", Role::Destination).unwrap()], &Options::new()).unwrap();
    assert_eq!(dst.cancel(), CancelOutcome::NotRunning);
    assert_eq!(dst.resume().unwrap_err().code, ErrorCode::State);
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Device>();
    check::<Source>();
    check::<Destination>();
    check::<CancelHandle>();
    fn clone<T: Clone>() {}
    clone::<CancelHandle>();
}
