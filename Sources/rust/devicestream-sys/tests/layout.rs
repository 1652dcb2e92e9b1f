//! The -sys crate against devicestream.h: every struct's size, alignment and field offsets, every
//! constant, and every function name, compared three ways: the Rust declarations, the C
//! compiler's layout of the same header (`layout_probe.c`, compiled and run by build.rs), and the
//! numbers worked out by hand from the header for LP64 Linux (x86_64, aarch64). Plus
//! `ds_abi_version()` from the library itself.

use devicestream_sys::*;
use std::mem::{align_of, offset_of, size_of};

include!(concat!(env!("OUT_DIR"), "/c_layout.rs"));

const HEADER: &str = include_str!(env!("DEVICESTREAM_HEADER"));

/// (struct, field, Rust offset, Rust size); field "" is the struct (size, alignment).
macro_rules! rust_layout {
    ($($s:ident { $($f:ident),* $(,)? })*) => {{
        let mut v: Vec<(&'static str, &'static str, usize, usize)> = Vec::new();
        $(
            v.push((stringify!($s), "", size_of::<$s>(), align_of::<$s>()));
            $( v.push((stringify!($s), stringify!($f), offset_of!($s, $f), {
                fn field_size<T, F>(_: fn(&T) -> &F) -> usize { size_of::<F>() }
                field_size(|x: &$s| &x.$f)
            })); )*
        )*
        v
    }};
}

fn rust_layout() -> Vec<(&'static str, &'static str, usize, usize)> {
    rust_layout! {
        ds_device_ops { struct_size, kind, migration_flags, name, size, tracking_chunk, initial_state, reserved,
                        set_state, precopy_info, stop_copy_size, read, write, data_fd, dirty_bitmap,
                        save_config, load_config, digest, release }
        ds_event { struct_size, kind, iteration, bytes, dirty_bytes, predicted_downtime_ns, duration_ns,
                   device, phase, reason, reserved, text }
        ds_stats { struct_size, phase, elapsed_ns, setup_ns, transferred_bytes, remaining_bytes, iterations,
                   bandwidth_bytes_per_sec, expected_downtime_ns, downtime_ns }
        ds_report { struct_size, completed, error_code, switchover_reason, converged, cancelled_after_commit,
                    digests_verified, devices, total_ns, setup_ns, downtime_ns, expected_downtime_ns,
                    downtime_limit_ns, iterations, precopy_bytes, stopcopy_bytes, wire_bytes, protection }
    }
}

#[test]
fn abi_version_is_the_headers() {
    let v = unsafe { ds_abi_version() };
    assert_eq!(v, DS_ABI_VERSION_MAJOR << 16 | DS_ABI_VERSION_MINOR, "library ABI {:#x}", v);
}

#[test]
fn structs_match_the_c_compiler() {
    let rust = rust_layout();
    assert_eq!(rust.len(), C_LAYOUT.len(), "the Rust and C tables list different fields");
    for (c, r) in C_LAYOUT.iter().zip(rust.iter()) {
        assert_eq!(c, r, "C says {:?}, Rust says {:?} (struct, field, offset|size, size|align)", c, r);
    }
}

#[test]
fn structs_match_the_hand_computed_layout() {
    // LP64: pointers and u64 are 8 bytes, 8-aligned; u32/i32 are 4.
    assert_eq!(size_of::<ds_device_ops>(), 136); // 48 bytes of fields, 11 callbacks at 48..136
    assert_eq!(offset_of!(ds_device_ops, migration_flags), 8);
    assert_eq!(offset_of!(ds_device_ops, name), 16);
    assert_eq!(offset_of!(ds_device_ops, initial_state), 40);
    assert_eq!(offset_of!(ds_device_ops, set_state), 48);
    assert_eq!(offset_of!(ds_device_ops, release), 128);
    assert_eq!(size_of::<ds_event>(), 72);
    assert_eq!(offset_of!(ds_event, predicted_downtime_ns), 32);
    assert_eq!(offset_of!(ds_event, device), 48);
    assert_eq!(offset_of!(ds_event, text), 64);
    assert_eq!(size_of::<ds_stats>(), 72);
    assert_eq!(offset_of!(ds_stats, bandwidth_bytes_per_sec), 48);
    assert_eq!(offset_of!(ds_stats, downtime_ns), 64);
    assert_eq!(size_of::<ds_report>(), 112);
    assert_eq!(offset_of!(ds_report, protection), 104);
    assert_eq!(offset_of!(ds_report, devices), 28);
    assert_eq!(offset_of!(ds_report, total_ns), 32);
    assert_eq!(offset_of!(ds_report, wire_bytes), 96);
    // Callbacks are nullable function pointers: Option<fn> is pointer-sized.
    assert_eq!(size_of::<ds_event_fn>(), size_of::<usize>());
}

/// The names of the header's `#define DS_* <number>` lines.
fn header_constants() -> Vec<&'static str> {
    HEADER
        .lines()
        .filter_map(|l| l.strip_prefix("#define "))
        .filter_map(|rest| {
            let mut parts = rest.split_whitespace();
            let name = parts.next()?;
            let value = parts.next()?;
            (name.starts_with("DS_") && value.trim_start_matches('(').starts_with(|c: char| c.is_ascii_digit())).then_some(name)
        })
        .collect()
}

#[test]
fn constants_match_the_header() {
    let rust: &[(&str, i64)] = &[
        ("DS_ABI_VERSION_MAJOR", DS_ABI_VERSION_MAJOR as i64),
        ("DS_ABI_VERSION_MINOR", DS_ABI_VERSION_MINOR as i64),
        ("DS_OK", DS_OK as i64),
        ("DS_ERR_CONNECT", DS_ERR_CONNECT as i64),
        ("DS_ERR_PEER_CLOSED", DS_ERR_PEER_CLOSED as i64),
        ("DS_ERR_PROTOCOL", DS_ERR_PROTOCOL as i64),
        ("DS_ERR_CORRUPTION", DS_ERR_CORRUPTION as i64),
        ("DS_ERR_TIMEOUT", DS_ERR_TIMEOUT as i64),
        ("DS_ERR_LOCAL_IO", DS_ERR_LOCAL_IO as i64),
        ("DS_ERR_REJECTED", DS_ERR_REJECTED as i64),
        ("DS_ERR_REMOTE", DS_ERR_REMOTE as i64),
        ("DS_ERR_USAGE", DS_ERR_USAGE as i64),
        ("DS_ERR_DEVICE", DS_ERR_DEVICE as i64),
        ("DS_ERR_ABORTED", DS_ERR_ABORTED as i64),
        ("DS_ERR_CANCELLED", DS_ERR_CANCELLED as i64),
        ("DS_ERR_STATE", DS_ERR_STATE as i64),
        ("DS_POLICY_WAIT", DS_POLICY_WAIT as i64),
        ("DS_POLICY_SWITCHOVER", DS_POLICY_SWITCHOVER as i64),
        ("DS_POLICY_ABORT", DS_POLICY_ABORT as i64),
        ("DS_BACKEND_AUTO", DS_BACKEND_AUTO as i64),
        ("DS_BACKEND_IO_URING", DS_BACKEND_IO_URING as i64),
        ("DS_BACKEND_BLOCKING", DS_BACKEND_BLOCKING as i64),
        ("DS_STATE_ERROR", DS_STATE_ERROR as i64),
        ("DS_STATE_STOP", DS_STATE_STOP as i64),
        ("DS_STATE_RUNNING", DS_STATE_RUNNING as i64),
        ("DS_STATE_STOP_COPY", DS_STATE_STOP_COPY as i64),
        ("DS_STATE_RESUMING", DS_STATE_RESUMING as i64),
        ("DS_STATE_RUNNING_P2P", DS_STATE_RUNNING_P2P as i64),
        ("DS_STATE_PRE_COPY", DS_STATE_PRE_COPY as i64),
        ("DS_STATE_PRE_COPY_P2P", DS_STATE_PRE_COPY_P2P as i64),
        ("DS_MIGRATION_STOP_COPY", DS_MIGRATION_STOP_COPY as i64),
        ("DS_MIGRATION_P2P", DS_MIGRATION_P2P as i64),
        ("DS_MIGRATION_PRE_COPY", DS_MIGRATION_PRE_COPY as i64),
        ("DS_ROLE_SOURCE", DS_ROLE_SOURCE as i64),
        ("DS_ROLE_DESTINATION", DS_ROLE_DESTINATION as i64),
        ("DS_DEVICE_ADDRESSABLE", DS_DEVICE_ADDRESSABLE as i64),
        ("DS_DEVICE_STREAM", DS_DEVICE_STREAM as i64),
        ("DS_EVENT_SETUP_DONE", DS_EVENT_SETUP_DONE as i64),
        ("DS_EVENT_ITERATION", DS_EVENT_ITERATION as i64),
        ("DS_EVENT_ROUND_LOADED", DS_EVENT_ROUND_LOADED as i64),
        ("DS_EVENT_READY_TO_SWITCHOVER", DS_EVENT_READY_TO_SWITCHOVER as i64),
        ("DS_EVENT_SWITCHOVER", DS_EVENT_SWITCHOVER as i64),
        ("DS_EVENT_HANDOVER", DS_EVENT_HANDOVER as i64),
        ("DS_EVENT_DEVICE_PROGRESS", DS_EVENT_DEVICE_PROGRESS as i64),
        ("DS_EVENT_WARNING", DS_EVENT_WARNING as i64),
        ("DS_PHASE_STATE_SENT", DS_PHASE_STATE_SENT as i64),
        ("DS_PHASE_LOADED_SENT", DS_PHASE_LOADED_SENT as i64),
        ("DS_PHASE_LOADED_RECEIVED", DS_PHASE_LOADED_RECEIVED as i64),
        ("DS_PHASE_COMMIT_SENT", DS_PHASE_COMMIT_SENT as i64),
        ("DS_PHASE_COMMIT_RECEIVED", DS_PHASE_COMMIT_RECEIVED as i64),
        ("DS_PHASE_RUNNING", DS_PHASE_RUNNING as i64),
        ("DS_PHASE_RESUMED_RECEIVED", DS_PHASE_RESUMED_RECEIVED as i64),
        ("DS_PROTECTION_INSECURE", DS_PROTECTION_INSECURE as i64),
        ("DS_PROTECTION_TLS_PSK", DS_PROTECTION_TLS_PSK as i64),
        ("DS_PROTECTION_TLS_X509", DS_PROTECTION_TLS_X509 as i64),
        ("DS_REASON_NONE", DS_REASON_NONE as i64),
        ("DS_REASON_CONVERGED", DS_REASON_CONVERGED as i64),
        ("DS_REASON_NOTHING_TO_SEND", DS_REASON_NOTHING_TO_SEND as i64),
        ("DS_REASON_NONCONVERGENCE", DS_REASON_NONCONVERGENCE as i64),
        ("DS_REASON_DEADLINE", DS_REASON_DEADLINE as i64),
        ("DS_REASON_NO_PRECOPY", DS_REASON_NO_PRECOPY as i64),
        ("DS_REASON_REQUESTED", DS_REASON_REQUESTED as i64),
        ("DS_SESSION_IDLE", DS_SESSION_IDLE as i64),
        ("DS_SESSION_SETUP", DS_SESSION_SETUP as i64),
        ("DS_SESSION_PRECOPY", DS_SESSION_PRECOPY as i64),
        ("DS_SESSION_READY_TO_SWITCHOVER", DS_SESSION_READY_TO_SWITCHOVER as i64),
        ("DS_SESSION_STOP_COPY", DS_SESSION_STOP_COPY as i64),
        ("DS_SESSION_HANDOVER", DS_SESSION_HANDOVER as i64),
        ("DS_SESSION_VERIFYING", DS_SESSION_VERIFYING as i64),
        ("DS_SESSION_COMPLETED", DS_SESSION_COMPLETED as i64),
        ("DS_SESSION_FAILED", DS_SESSION_FAILED as i64),
    ];
    assert_eq!(rust, C_CONSTANTS, "the Rust constants differ from the C compiler's");
    let header = header_constants();
    let names: Vec<&str> = rust.iter().map(|(n, _)| *n).collect();
    for name in &header {
        assert!(names.contains(name), "{name} is in devicestream.h but not in devicestream-sys");
    }
    assert_eq!(header.len(), names.len(), "devicestream.h has {} DS_* constants", header.len());
}

#[test]
fn every_header_function_is_declared() {
    // Taking each function's address proves the declaration exists and links.
    let declared: &[(&str, usize)] = &[
        ("ds_abi_version", ds_abi_version as *const () as usize),
        ("ds_error_code", ds_error_code as *const () as usize),
        ("ds_error_message", ds_error_message as *const () as usize),
        ("ds_error_hint", ds_error_hint as *const () as usize),
        ("ds_error_free", ds_error_free as *const () as usize),
        ("ds_options_new", ds_options_new as *const () as usize),
        ("ds_options_free", ds_options_free as *const () as usize),
        ("ds_options_set_connections", ds_options_set_connections as *const () as usize),
        ("ds_options_set_psk", ds_options_set_psk as *const () as usize),
        ("ds_options_set_insecure", ds_options_set_insecure as *const () as usize),
        ("ds_options_set_downtime_limit_ns", ds_options_set_downtime_limit_ns as *const () as usize),
        ("ds_options_set_policy", ds_options_set_policy as *const () as usize),
        ("ds_options_set_deadline_ns", ds_options_set_deadline_ns as *const () as usize),
        ("ds_options_set_timeout_ns", ds_options_set_timeout_ns as *const () as usize),
        ("ds_options_set_backend", ds_options_set_backend as *const () as usize),
        ("ds_options_external_switchover", ds_options_external_switchover as *const () as usize),
        ("ds_options_hold_resume", ds_options_hold_resume as *const () as usize),
        ("ds_device_from_spec", ds_device_from_spec as *const () as usize),
        ("ds_device_from_ops", ds_device_from_ops as *const () as usize),
        ("ds_device_free", ds_device_free as *const () as usize),
        ("ds_source_new", ds_source_new as *const () as usize),
        ("ds_source_connect", ds_source_connect as *const () as usize),
        ("ds_source_attach_fds", ds_source_attach_fds as *const () as usize),
        ("ds_source_wait", ds_source_wait as *const () as usize),
        ("ds_source_switchover", ds_source_switchover as *const () as usize),
        ("ds_source_set_external_pending", ds_source_set_external_pending as *const () as usize),
        ("ds_source_cancel", ds_source_cancel as *const () as usize),
        ("ds_source_stats", ds_source_stats as *const () as usize),
        ("ds_source_report", ds_source_report as *const () as usize),
        ("ds_source_free", ds_source_free as *const () as usize),
        ("ds_dest_new", ds_dest_new as *const () as usize),
        ("ds_dest_listen", ds_dest_listen as *const () as usize),
        ("ds_dest_attach_fds", ds_dest_attach_fds as *const () as usize),
        ("ds_dest_wait", ds_dest_wait as *const () as usize),
        ("ds_dest_resume", ds_dest_resume as *const () as usize),
        ("ds_dest_cancel", ds_dest_cancel as *const () as usize),
        ("ds_dest_stats", ds_dest_stats as *const () as usize),
        ("ds_dest_report", ds_dest_report as *const () as usize),
        ("ds_dest_free", ds_dest_free as *const () as usize),
    ];
    assert!(declared.iter().all(|(_, a)| *a != 0));
    // Every declaration line of the header: `type name(` with a name starting with ds_.
    let mut in_header: Vec<&str> = Vec::new();
    for line in HEADER.lines().filter(|l| !l.starts_with([' ', '#', '/', '*', '}']) && !l.starts_with("typedef")) {
        if let Some(j) = line.find('(') {
            let name = line[..j].rsplit([' ', '*']).next().unwrap_or("");
            if name.starts_with("ds_") {
                in_header.push(name);
            }
        }
    }
    let names: Vec<&str> = declared.iter().map(|(n, _)| *n).collect();
    in_header.sort();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(in_header, sorted, "devicestream.h declares these functions");
}
