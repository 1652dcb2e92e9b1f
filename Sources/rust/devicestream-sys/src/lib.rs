//! Raw bindings to `libdevicestream.so.1`, the C ABI of DeviceStream.
//!
//! Written by hand from `Sources/CDeviceStream/include/devicestream.h` and kept one to one with
//! it: the same names, the same constants, the same struct layouts (`#[repr(C)]`, `struct_size`
//! first). The header is the contract; read it for what each function does, which thread calls
//! which callback, and who owns what. The safe crate is `devicestream`.
//!
//! Linking: the build script links `devicestream` from `$DEVICESTREAM_LIB_DIR` (default
//! `<repo>/.build/cabi/lib`, made by `Tests/CABI/build-library.sh`) and adds that directory as
//! an rpath of this crate's own tests. It exports the directory as `DEP_DEVICESTREAM_LIB_DIR` to
//! crates that depend on this one, so they can add the rpath to their binaries too (cargo does
//! not pass link arguments on to dependents).
//!
//! The layout test (`tests/layout.rs`) compares every struct's size and field offsets with what
//! the C compiler says for the same header (a probe compiled and run by `build.rs`), and with the
//! numbers worked out by hand from the header for x86_64/aarch64 Linux.

#![no_std]
#![allow(non_camel_case_types)]

use core::ffi::{c_char, c_int, c_void};

// ------------------------------------------------------------------------------------------
// ABI version

/// `DS_ABI_VERSION_MAJOR`.
pub const DS_ABI_VERSION_MAJOR: u32 = 1;
/// `DS_ABI_VERSION_MINOR`.
pub const DS_ABI_VERSION_MINOR: u32 = 1;

// ------------------------------------------------------------------------------------------
// Errors

/// `ds_error`: opaque; freed with [`ds_error_free`].
#[repr(C)]
pub struct ds_error {
    _opaque: [u8; 0],
    _not_send_sync: core::marker::PhantomData<(*mut u8, core::marker::PhantomPinned)>,
}

pub const DS_OK: c_int = 0;
pub const DS_ERR_CONNECT: c_int = 1;
pub const DS_ERR_PEER_CLOSED: c_int = 2;
pub const DS_ERR_PROTOCOL: c_int = 3;
pub const DS_ERR_CORRUPTION: c_int = 4;
pub const DS_ERR_TIMEOUT: c_int = 5;
pub const DS_ERR_LOCAL_IO: c_int = 6;
pub const DS_ERR_REJECTED: c_int = 7;
pub const DS_ERR_REMOTE: c_int = 8;
pub const DS_ERR_USAGE: c_int = 9;
pub const DS_ERR_DEVICE: c_int = 10;
pub const DS_ERR_ABORTED: c_int = 11;
pub const DS_ERR_CANCELLED: c_int = 12;
pub const DS_ERR_STATE: c_int = 13;

// ------------------------------------------------------------------------------------------
// Options

/// `ds_options`: opaque; freed with [`ds_options_free`].
#[repr(C)]
pub struct ds_options {
    _opaque: [u8; 0],
    _not_send_sync: core::marker::PhantomData<(*mut u8, core::marker::PhantomPinned)>,
}

pub const DS_POLICY_WAIT: c_int = 0;
pub const DS_POLICY_SWITCHOVER: c_int = 1;
pub const DS_POLICY_ABORT: c_int = 2;

pub const DS_BACKEND_AUTO: c_int = 0;
pub const DS_BACKEND_IO_URING: c_int = 1;
pub const DS_BACKEND_BLOCKING: c_int = 2;

// ------------------------------------------------------------------------------------------
// Devices

/// `ds_device`: opaque; freed with [`ds_device_free`].
#[repr(C)]
pub struct ds_device {
    _opaque: [u8; 0],
    _not_send_sync: core::marker::PhantomData<(*mut u8, core::marker::PhantomPinned)>,
}

pub const DS_STATE_ERROR: u32 = 0;
pub const DS_STATE_STOP: u32 = 1;
pub const DS_STATE_RUNNING: u32 = 2;
pub const DS_STATE_STOP_COPY: u32 = 3;
pub const DS_STATE_RESUMING: u32 = 4;
pub const DS_STATE_RUNNING_P2P: u32 = 5;
pub const DS_STATE_PRE_COPY: u32 = 6;
pub const DS_STATE_PRE_COPY_P2P: u32 = 7;

pub const DS_MIGRATION_STOP_COPY: u64 = 1 << 0;
pub const DS_MIGRATION_P2P: u64 = 1 << 1;
pub const DS_MIGRATION_PRE_COPY: u64 = 1 << 2;

pub const DS_ROLE_SOURCE: c_int = 0;
pub const DS_ROLE_DESTINATION: c_int = 1;

pub const DS_DEVICE_ADDRESSABLE: u32 = 0;
pub const DS_DEVICE_STREAM: u32 = 1;

/// `ds_device_ops`: a device the VMM defines. Set `struct_size` to
/// `size_of::<ds_device_ops>()`. Callbacks return 0 (or a count) on success and a negative errno
/// on failure; every one of them gets `user`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ds_device_ops {
    pub struct_size: u32,
    pub kind: u32,
    pub migration_flags: u64,
    pub name: *const c_char,
    pub size: u64,
    pub tracking_chunk: u64,
    pub initial_state: u32,
    pub reserved: u32,
    pub set_state: Option<unsafe extern "C" fn(user: *mut c_void, from: u32, to: u32) -> c_int>,
    pub precopy_info: Option<unsafe extern "C" fn(user: *mut c_void, initial_bytes: *mut u64, dirty_bytes: *mut u64) -> c_int>,
    pub stop_copy_size: Option<unsafe extern "C" fn(user: *mut c_void, bytes: *mut u64) -> c_int>,
    pub read: Option<unsafe extern "C" fn(user: *mut c_void, buffer: *mut c_void, length: usize) -> i64>,
    pub write: Option<unsafe extern "C" fn(user: *mut c_void, buffer: *const c_void, length: usize) -> c_int>,
    pub data_fd: Option<unsafe extern "C" fn(user: *mut c_void, for_load: c_int) -> c_int>,
    pub dirty_bitmap: Option<unsafe extern "C" fn(user: *mut c_void, bitmap: *mut u64, words: usize, clear: c_int) -> c_int>,
    pub save_config: Option<unsafe extern "C" fn(user: *mut c_void, buffer: *mut c_void, capacity: usize) -> i64>,
    pub load_config: Option<unsafe extern "C" fn(user: *mut c_void, buffer: *const c_void, length: usize) -> c_int>,
    pub digest: Option<unsafe extern "C" fn(user: *mut c_void, digest: *mut u64) -> c_int>,
    pub release: Option<unsafe extern "C" fn(user: *mut c_void)>,
}

// ------------------------------------------------------------------------------------------
// Events, statistics, reports

pub const DS_EVENT_SETUP_DONE: u32 = 1;
pub const DS_EVENT_ITERATION: u32 = 2;
pub const DS_EVENT_ROUND_LOADED: u32 = 3;
pub const DS_EVENT_READY_TO_SWITCHOVER: u32 = 4;
pub const DS_EVENT_SWITCHOVER: u32 = 5;
pub const DS_EVENT_HANDOVER: u32 = 6;
pub const DS_EVENT_DEVICE_PROGRESS: u32 = 7;
pub const DS_EVENT_WARNING: u32 = 8;

pub const DS_PHASE_STATE_SENT: u32 = 1;
pub const DS_PHASE_LOADED_SENT: u32 = 2;
pub const DS_PHASE_LOADED_RECEIVED: u32 = 3;
pub const DS_PHASE_COMMIT_SENT: u32 = 4;
pub const DS_PHASE_COMMIT_RECEIVED: u32 = 5;
pub const DS_PHASE_RUNNING: u32 = 6;
pub const DS_PHASE_RESUMED_RECEIVED: u32 = 7;

pub const DS_PROTECTION_INSECURE: u32 = 0;
pub const DS_PROTECTION_TLS_PSK: u32 = 1;
pub const DS_PROTECTION_TLS_X509: u32 = 2;

pub const DS_REASON_NONE: u32 = 0;
pub const DS_REASON_CONVERGED: u32 = 1;
pub const DS_REASON_NOTHING_TO_SEND: u32 = 2;
pub const DS_REASON_NONCONVERGENCE: u32 = 3;
pub const DS_REASON_DEADLINE: u32 = 4;
pub const DS_REASON_NO_PRECOPY: u32 = 5;
pub const DS_REASON_REQUESTED: u32 = 6;

/// `ds_event`: valid during the callback only (`text` too).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ds_event {
    pub struct_size: u32,
    pub kind: u32,
    pub iteration: u64,
    pub bytes: u64,
    pub dirty_bytes: u64,
    pub predicted_downtime_ns: i64,
    pub duration_ns: i64,
    pub device: u32,
    pub phase: u32,
    pub reason: u32,
    pub reserved: u32,
    pub text: *const c_char,
}

/// `ds_event_fn`.
pub type ds_event_fn = Option<unsafe extern "C" fn(event: *const ds_event, user: *mut c_void)>;

pub const DS_SESSION_IDLE: u32 = 0;
pub const DS_SESSION_SETUP: u32 = 1;
pub const DS_SESSION_PRECOPY: u32 = 2;
pub const DS_SESSION_READY_TO_SWITCHOVER: u32 = 3;
pub const DS_SESSION_STOP_COPY: u32 = 4;
pub const DS_SESSION_HANDOVER: u32 = 5;
pub const DS_SESSION_VERIFYING: u32 = 6;
pub const DS_SESSION_COMPLETED: u32 = 7;
pub const DS_SESSION_FAILED: u32 = 8;

/// `ds_stats`: set `struct_size` before the call.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct ds_stats {
    pub struct_size: u32,
    pub phase: u32,
    pub elapsed_ns: u64,
    pub setup_ns: i64,
    pub transferred_bytes: u64,
    pub remaining_bytes: i64,
    pub iterations: u64,
    pub bandwidth_bytes_per_sec: f64,
    pub expected_downtime_ns: i64,
    pub downtime_ns: i64,
}

/// `ds_report`: set `struct_size` before the call.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct ds_report {
    pub struct_size: u32,
    pub completed: i32,
    pub error_code: i32,
    pub switchover_reason: u32,
    pub converged: i32,
    pub cancelled_after_commit: i32,
    pub digests_verified: i32,
    pub devices: u32,
    pub total_ns: u64,
    pub setup_ns: u64,
    pub downtime_ns: i64,
    pub expected_downtime_ns: i64,
    pub downtime_limit_ns: u64,
    pub iterations: u64,
    pub precopy_bytes: u64,
    pub stopcopy_bytes: u64,
    pub wire_bytes: u64,
    /// `DS_PROTECTION_*` (ABI 1.1).
    pub protection: u32,
}

// ------------------------------------------------------------------------------------------
// Sessions

/// `ds_source`: opaque; freed with [`ds_source_free`].
#[repr(C)]
pub struct ds_source {
    _opaque: [u8; 0],
    _not_send_sync: core::marker::PhantomData<(*mut u8, core::marker::PhantomPinned)>,
}

/// `ds_dest`: opaque; freed with [`ds_dest_free`].
#[repr(C)]
pub struct ds_dest {
    _opaque: [u8; 0],
    _not_send_sync: core::marker::PhantomData<(*mut u8, core::marker::PhantomPinned)>,
}

extern "C" {
    pub fn ds_abi_version() -> u32;

    pub fn ds_error_code(err: *const ds_error) -> c_int;
    pub fn ds_error_message(err: *const ds_error) -> *const c_char;
    pub fn ds_error_hint(err: *const ds_error) -> *const c_char;
    pub fn ds_error_free(err: *mut ds_error);

    pub fn ds_options_new() -> *mut ds_options;
    pub fn ds_options_free(opts: *mut ds_options);
    pub fn ds_options_set_connections(opts: *mut ds_options, connections: u32, err: *mut *mut ds_error) -> c_int;
    pub fn ds_options_set_psk(opts: *mut ds_options, key: *const u8, length: usize, err: *mut *mut ds_error) -> c_int;
    pub fn ds_options_set_insecure(opts: *mut ds_options, allow: c_int) -> c_int;
    pub fn ds_options_set_downtime_limit_ns(opts: *mut ds_options, ns: u64, err: *mut *mut ds_error) -> c_int;
    pub fn ds_options_set_policy(opts: *mut ds_options, policy: c_int, err: *mut *mut ds_error) -> c_int;
    pub fn ds_options_set_deadline_ns(opts: *mut ds_options, ns: u64) -> c_int;
    pub fn ds_options_set_timeout_ns(opts: *mut ds_options, ns: u64, err: *mut *mut ds_error) -> c_int;
    pub fn ds_options_set_backend(opts: *mut ds_options, backend: c_int, err: *mut *mut ds_error) -> c_int;
    pub fn ds_options_external_switchover(opts: *mut ds_options, on: c_int) -> c_int;
    pub fn ds_options_hold_resume(opts: *mut ds_options, timeout_ns: u64) -> c_int;

    pub fn ds_device_from_spec(spec: *const c_char, role: c_int, err: *mut *mut ds_error) -> *mut ds_device;
    pub fn ds_device_from_ops(ops: *const ds_device_ops, user: *mut c_void, err: *mut *mut ds_error) -> *mut ds_device;
    pub fn ds_device_free(device: *mut ds_device);

    pub fn ds_source_new(devices: *const *mut ds_device, count: usize, opts: *const ds_options, err: *mut *mut ds_error) -> *mut ds_source;
    pub fn ds_source_connect(
        src: *mut ds_source,
        host_port: *const c_char,
        on_event: ds_event_fn,
        user: *mut c_void,
        err: *mut *mut ds_error,
    ) -> c_int;
    pub fn ds_source_attach_fds(
        src: *mut ds_source,
        fds: *const c_int,
        count: usize,
        on_event: ds_event_fn,
        user: *mut c_void,
        err: *mut *mut ds_error,
    ) -> c_int;
    pub fn ds_source_wait(src: *mut ds_source, timeout_ns: u64, err: *mut *mut ds_error) -> c_int;
    pub fn ds_source_switchover(src: *mut ds_source) -> c_int;
    pub fn ds_source_set_external_pending(src: *mut ds_source, bytes: u64) -> c_int;
    pub fn ds_source_cancel(src: *mut ds_source) -> c_int;
    pub fn ds_source_stats(src: *const ds_source, out: *mut ds_stats) -> c_int;
    pub fn ds_source_report(src: *const ds_source, out: *mut ds_report) -> c_int;
    pub fn ds_source_free(src: *mut ds_source);

    pub fn ds_dest_new(devices: *const *mut ds_device, count: usize, opts: *const ds_options, err: *mut *mut ds_error) -> *mut ds_dest;
    pub fn ds_dest_listen(
        dst: *mut ds_dest,
        host_port: *const c_char,
        bound_port: *mut u16,
        on_event: ds_event_fn,
        user: *mut c_void,
        err: *mut *mut ds_error,
    ) -> c_int;
    pub fn ds_dest_attach_fds(
        dst: *mut ds_dest,
        fds: *const c_int,
        count: usize,
        on_event: ds_event_fn,
        user: *mut c_void,
        err: *mut *mut ds_error,
    ) -> c_int;
    pub fn ds_dest_wait(dst: *mut ds_dest, timeout_ns: u64, err: *mut *mut ds_error) -> c_int;
    pub fn ds_dest_resume(dst: *mut ds_dest) -> c_int;
    pub fn ds_dest_cancel(dst: *mut ds_dest) -> c_int;
    pub fn ds_dest_stats(dst: *const ds_dest, out: *mut ds_stats) -> c_int;
    pub fn ds_dest_report(dst: *const ds_dest, out: *mut ds_report) -> c_int;
    pub fn ds_dest_free(dst: *mut ds_dest);
}
