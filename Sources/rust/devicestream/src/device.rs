//! Devices: built-in ones from a spec string, and the VMM's own through [`MigratableDevice`].

use crate::error::{Error, ErrorCode, Result};
use devicestream_sys as sys;
use std::any::Any;
use std::ffi::{c_int, c_void, CString};
use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{self, NonNull};
use std::sync::{Arc, Mutex, PoisonError};

/// A VFIO v2 device state (`VFIO_DEVICE_STATE_*`, `DS_STATE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum DeviceState {
    Error = sys::DS_STATE_ERROR,
    Stop = sys::DS_STATE_STOP,
    Running = sys::DS_STATE_RUNNING,
    StopCopy = sys::DS_STATE_STOP_COPY,
    Resuming = sys::DS_STATE_RESUMING,
    RunningP2p = sys::DS_STATE_RUNNING_P2P,
    PreCopy = sys::DS_STATE_PRE_COPY,
    PreCopyP2p = sys::DS_STATE_PRE_COPY_P2P,
}

impl DeviceState {
    /// The state for a `DS_STATE_*` value.
    pub fn from_raw(v: u32) -> Option<DeviceState> {
        use DeviceState::*;
        [Error, Stop, Running, StopCopy, Resuming, RunningP2p, PreCopy, PreCopyP2p].into_iter().find(|s| *s as u32 == v)
    }
    /// The `DS_STATE_*` value.
    pub fn raw(self) -> u32 {
        self as u32
    }
    /// The device runs (its guest-visible side moves): RUNNING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P.
    pub fn is_running(self) -> bool {
        matches!(self, DeviceState::Running | DeviceState::RunningP2p | DeviceState::PreCopy | DeviceState::PreCopyP2p)
    }
    /// The device produces migration data: PRE_COPY, PRE_COPY_P2P, STOP_COPY.
    pub fn is_saving(self) -> bool {
        matches!(self, DeviceState::PreCopy | DeviceState::PreCopyP2p | DeviceState::StopCopy)
    }
}

/// VFIO migration flags (`VFIO_MIGRATION_*`, `DS_MIGRATION_*`): which states a device has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MigrationFlags(u64);

impl MigrationFlags {
    /// STOP_COPY: every migratable device has it.
    pub const STOP_COPY: MigrationFlags = MigrationFlags(sys::DS_MIGRATION_STOP_COPY);
    /// The P2P states.
    pub const P2P: MigrationFlags = MigrationFlags(sys::DS_MIGRATION_P2P);
    /// PRE_COPY: the device is migrated while it runs.
    pub const PRE_COPY: MigrationFlags = MigrationFlags(sys::DS_MIGRATION_PRE_COPY);
    /// The raw bits.
    pub fn bits(self) -> u64 {
        self.0
    }
    /// Whether every flag of `other` is set.
    pub fn contains(self, other: MigrationFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for MigrationFlags {
    type Output = MigrationFlags;
    fn bitor(self, rhs: MigrationFlags) -> MigrationFlags {
        MigrationFlags(self.0 | rhs.0)
    }
}

/// Which end a device from a spec is for (`DS_ROLE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Source,
    Destination,
}

/// Whether the library reads a data fd or calls read/write (`data_fd(for_load)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The library preads the fd (saving states).
    Save,
    /// The library pwrites the fd (RESUMING).
    Load,
}

/// How a device's state is moved (`DS_DEVICE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// State at byte offsets of an fd ([`MigratableDevice::data_fd`]), with a dirty bitmap
    /// ([`MigratableDevice::dirty_bitmap`]) at `tracking_chunk` granularity (a power of two).
    Addressable { size: u64, tracking_chunk: u64 },
    /// An opaque ordered stream ([`MigratableDevice::read`] / [`MigratableDevice::write`]), as a
    /// VFIO `data_fd`.
    Stream,
}

/// `VFIO_MIG_GET_PRECOPY_INFO`: what pre-copy still has to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrecopyInfo {
    /// Bytes of initial data not yet read.
    pub initial_bytes: u64,
    /// Bytes dirtied since.
    pub dirty_bytes: u64,
}

/// A positive errno a device callback fails with (the library gets it negated, and the session
/// fails with [`ErrorCode::Device`]). Linux values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    pub const EPERM: Errno = Errno(1);
    pub const EIO: Errno = Errno(5);
    pub const EAGAIN: Errno = Errno(11);
    pub const ENOMEM: Errno = Errno(12);
    pub const EBUSY: Errno = Errno(16);
    pub const EINVAL: Errno = Errno(22);
    pub const ENOSPC: Errno = Errno(28);
    pub const ENOTSUP: Errno = Errno(95);
    /// What a callback that panicked returns to the library ("state not recoverable").
    pub const ENOTRECOVERABLE: Errno = Errno(131);

    fn negated(self) -> c_int {
        if self.0 > 0 {
            -self.0
        } else {
            -Errno::EIO.0
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

/// What a [`MigratableDevice`] is, read once when the [`Device`] is made (it fills the
/// `ds_device_ops` table: the optional callbacks are left NULL unless `has_*` says otherwise).
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// Shown in reports and errors.
    pub name: String,
    pub kind: DeviceKind,
    /// Must contain [`MigrationFlags::STOP_COPY`]; [`MigrationFlags::PRE_COPY`] for pre-copy.
    pub migration_flags: MigrationFlags,
    /// [`DeviceState::Running`] for a source, [`DeviceState::Resuming`] for a destination.
    pub initial_state: DeviceState,
    /// [`MigratableDevice::precopy_info`] is implemented (required for a pre-copy stream
    /// device; an addressable device without it is measured by its dirty bitmap).
    pub has_precopy_info: bool,
    /// [`MigratableDevice::stop_copy_size`] is implemented (else: the size of an addressable
    /// device, 0 for a stream).
    pub has_stop_copy_size: bool,
    /// [`MigratableDevice::digest`] is implemented: the session compares digests at both ends
    /// (the report's `digests_verified`).
    pub has_digest: bool,
}

impl DeviceInfo {
    /// An addressable device with STOP_COPY and PRE_COPY, no optional callbacks.
    pub fn addressable(name: impl Into<String>, size: u64, tracking_chunk: u64, initial_state: DeviceState) -> DeviceInfo {
        DeviceInfo {
            name: name.into(),
            kind: DeviceKind::Addressable { size, tracking_chunk },
            migration_flags: MigrationFlags::STOP_COPY | MigrationFlags::PRE_COPY,
            initial_state,
            has_precopy_info: false,
            has_stop_copy_size: false,
            has_digest: false,
        }
    }
    /// A stream device with STOP_COPY and PRE_COPY and a `precopy_info` callback.
    pub fn stream(name: impl Into<String>, initial_state: DeviceState) -> DeviceInfo {
        DeviceInfo {
            name: name.into(),
            kind: DeviceKind::Stream,
            migration_flags: MigrationFlags::STOP_COPY | MigrationFlags::PRE_COPY,
            initial_state,
            has_precopy_info: true,
            has_stop_copy_size: false,
            has_digest: false,
        }
    }
    /// Declares [`MigratableDevice::digest`].
    pub fn with_digest(mut self) -> DeviceInfo {
        self.has_digest = true;
        self
    }
    /// Declares [`MigratableDevice::precopy_info`].
    pub fn with_precopy_info(mut self) -> DeviceInfo {
        self.has_precopy_info = true;
        self
    }
    /// Declares [`MigratableDevice::stop_copy_size`].
    pub fn with_stop_copy_size(mut self) -> DeviceInfo {
        self.has_stop_copy_size = true;
        self
    }
    /// Replaces the migration flags.
    pub fn with_flags(mut self, flags: MigrationFlags) -> DeviceInfo {
        self.migration_flags = flags;
        self
    }
}

/// A device the VMM implements: the `ds_device_ops` callbacks of devicestream.h as methods.
///
/// Every method is called on library threads, never the caller's, and several may run at once
/// (addressable devices: `dirty_bitmap` and `precopy_info` from different threads), hence
/// `&self`, `Send + Sync` and interior mutability. State transitions and stream reads/writes
/// are serialized by the library. Methods must return promptly and must not wait for, or drop,
/// a session that uses this device.
///
/// A method fails with an [`Errno`]; the session then fails with [`ErrorCode::Device`]. A method
/// that panics is caught at the boundary (a panic never unwinds into the library): the library
/// gets `-ENOTRECOVERABLE`, the session fails, and the panic message is kept
/// ([`Device::take_panic`], and appended to the session's error).
///
/// Only the methods the [`DeviceInfo`] asks for are called: `data_fd` and `dirty_bitmap` for
/// an addressable device, `read` and `write` for a stream, the optional ones when declared.
pub trait MigratableDevice: Send + Sync + 'static {
    /// What the device is; called once, by [`Device::new`].
    fn info(&self) -> DeviceInfo;
    /// Moves the device along one arc of the VFIO state machine; the library walks multi-arc
    /// paths one arc at a time, in the kernel's order. Entering a saving state from a
    /// non-saving one starts a new migration stream (everything is pending again).
    fn set_state(&self, from: DeviceState, to: DeviceState) -> Result<(), Errno>;
    /// PRE_COPY: bytes of initial data not yet read, and dirty bytes since.
    fn precopy_info(&self) -> Result<PrecopyInfo, Errno> {
        Err(Errno::ENOTSUP)
    }
    /// Bytes STOP_COPY will still produce.
    fn stop_copy_size(&self) -> Result<u64, Errno> {
        Err(Errno::ENOTSUP)
    }
    /// Stream: reads up to `buf.len()` bytes of migration data; `Ok(0)` is "no data now"
    /// (PRE_COPY) or the end of the stream (STOP_COPY).
    fn read(&self, _buf: &mut [u8]) -> Result<usize, Errno> {
        Err(Errno::ENOTSUP)
    }
    /// Stream: writes the next bytes in order (RESUMING).
    fn write(&self, _data: &[u8]) -> Result<(), Errno> {
        Err(Errno::ENOTSUP)
    }
    /// Addressable: the fd the library preads ([`Access::Save`]) or pwrites ([`Access::Load`])
    /// at offsets. It stays the device's: the library never closes it, and it must stay open
    /// while a session that uses the device runs.
    fn data_fd(&self, _access: Access) -> Result<BorrowedFd<'_>, Errno> {
        Err(Errno::ENOTSUP)
    }
    /// Addressable: ORs the dirty tracking chunks into `bitmap` (bit i of word w is chunk
    /// w*64+i) and, when `clear`, clears them in the device. The first call after entering
    /// PRE_COPY (or STOP_COPY from STOP) must report every chunk.
    fn dirty_bitmap(&self, _bitmap: &mut [u64], _clear: bool) -> Result<(), Errno> {
        Err(Errno::ENOTSUP)
    }
    /// The device's config state (at most 1 MiB).
    fn save_config(&self) -> Result<Vec<u8>, Errno>;
    /// Loads a config state (RESUMING).
    fn load_config(&self, config: &[u8]) -> Result<(), Errno>;
    /// A 64-bit digest of the whole state (XXH3-64 to compare with the library's own devices),
    /// equal at both ends when the copy is exact.
    fn digest(&self) -> Result<u64, Errno> {
        Err(Errno::ENOTSUP)
    }
    /// The library is done with the device (`ds_device_free`). The value itself is dropped
    /// after this, when the last [`Device`] clone and the caller's own `Arc`s are gone.
    fn release(&self) {}
}

/// The last panic of a device's callbacks.
#[derive(Default)]
pub(crate) struct PanicRecord(Mutex<Option<String>>);

impl PanicRecord {
    fn record(&self, callback: &str, payload: Box<dyn Any + Send>) {
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string panic payload".into());
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(format!("{callback}: {text}"));
        // Dropping a payload can itself panic (a payload with a panicking Drop): never here.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
    }
    pub(crate) fn peek(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
    fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// What `user` points at for an ops device.
struct Shim<D> {
    device: Arc<D>,
    panics: Arc<PanicRecord>,
}

/// Runs `f` on the device behind `user`, turning a panic into `-ENOTRECOVERABLE`.
///
/// # Safety
/// `user` is the `Shim<D>` this module registered; it outlives the library's use of it.
unsafe fn guard<D: MigratableDevice, R>(user: *mut c_void, callback: &str, on_panic: R, f: impl FnOnce(&D) -> R) -> R {
    let shim = &*(user as *const Shim<D>);
    match catch_unwind(AssertUnwindSafe(|| f(&shim.device))) {
        Ok(r) => r,
        Err(payload) => {
            shim.panics.record(callback, payload);
            on_panic
        }
    }
}

const PANICKED: c_int = -Errno::ENOTRECOVERABLE.0;

fn rc(r: Result<(), Errno>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => e.negated(),
    }
}

unsafe extern "C" fn t_set_state<D: MigratableDevice>(user: *mut c_void, from: u32, to: u32) -> c_int {
    guard::<D, _>(user, "set_state", PANICKED, |d| match (DeviceState::from_raw(from), DeviceState::from_raw(to)) {
        (Some(f), Some(t)) => rc(d.set_state(f, t)),
        _ => -Errno::EINVAL.0,
    })
}

unsafe extern "C" fn t_precopy_info<D: MigratableDevice>(user: *mut c_void, initial: *mut u64, dirty: *mut u64) -> c_int {
    guard::<D, _>(user, "precopy_info", PANICKED, |d| match d.precopy_info() {
        Ok(info) => {
            if !initial.is_null() {
                *initial = info.initial_bytes;
            }
            if !dirty.is_null() {
                *dirty = info.dirty_bytes;
            }
            0
        }
        Err(e) => e.negated(),
    })
}

unsafe extern "C" fn t_stop_copy_size<D: MigratableDevice>(user: *mut c_void, bytes: *mut u64) -> c_int {
    guard::<D, _>(user, "stop_copy_size", PANICKED, |d| match d.stop_copy_size() {
        Ok(n) => {
            if !bytes.is_null() {
                *bytes = n;
            }
            0
        }
        Err(e) => e.negated(),
    })
}

unsafe fn bytes_mut<'a>(p: *mut c_void, n: usize) -> &'a mut [u8] {
    if p.is_null() || n == 0 {
        &mut []
    } else {
        std::slice::from_raw_parts_mut(p as *mut u8, n)
    }
}

unsafe fn bytes<'a>(p: *const c_void, n: usize) -> &'a [u8] {
    if p.is_null() || n == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(p as *const u8, n)
    }
}

unsafe extern "C" fn t_read<D: MigratableDevice>(user: *mut c_void, buffer: *mut c_void, length: usize) -> i64 {
    guard::<D, _>(user, "read", PANICKED as i64, |d| match d.read(bytes_mut(buffer, length)) {
        Ok(n) if n <= length => n as i64,
        Ok(_) => -Errno::EIO.0 as i64,
        Err(e) => e.negated() as i64,
    })
}

unsafe extern "C" fn t_write<D: MigratableDevice>(user: *mut c_void, buffer: *const c_void, length: usize) -> c_int {
    guard::<D, _>(user, "write", PANICKED, |d| rc(d.write(bytes(buffer, length))))
}

unsafe extern "C" fn t_data_fd<D: MigratableDevice>(user: *mut c_void, for_load: c_int) -> c_int {
    guard::<D, _>(user, "data_fd", PANICKED, |d| match d.data_fd(if for_load != 0 { Access::Load } else { Access::Save }) {
        Ok(fd) => fd.as_raw_fd(),
        Err(e) => e.negated(),
    })
}

unsafe extern "C" fn t_dirty_bitmap<D: MigratableDevice>(user: *mut c_void, bitmap: *mut u64, words: usize, clear: c_int) -> c_int {
    guard::<D, _>(user, "dirty_bitmap", PANICKED, |d| {
        let words: &mut [u64] = if bitmap.is_null() || words == 0 { &mut [] } else { std::slice::from_raw_parts_mut(bitmap, words) };
        rc(d.dirty_bitmap(words, clear != 0))
    })
}

unsafe extern "C" fn t_save_config<D: MigratableDevice>(user: *mut c_void, buffer: *mut c_void, capacity: usize) -> i64 {
    guard::<D, _>(user, "save_config", PANICKED as i64, |d| match d.save_config() {
        Ok(config) if config.len() > capacity => -Errno::ENOSPC.0 as i64,
        Ok(config) => {
            bytes_mut(buffer, config.len()).copy_from_slice(&config);
            config.len() as i64
        }
        Err(e) => e.negated() as i64,
    })
}

unsafe extern "C" fn t_load_config<D: MigratableDevice>(user: *mut c_void, buffer: *const c_void, length: usize) -> c_int {
    guard::<D, _>(user, "load_config", PANICKED, |d| rc(d.load_config(bytes(buffer, length))))
}

unsafe extern "C" fn t_digest<D: MigratableDevice>(user: *mut c_void, out: *mut u64) -> c_int {
    guard::<D, _>(user, "digest", PANICKED, |d| match d.digest() {
        Ok(v) => {
            if !out.is_null() {
                *out = v;
            }
            0
        }
        Err(e) => e.negated(),
    })
}

unsafe extern "C" fn t_release<D: MigratableDevice>(user: *mut c_void) {
    guard::<D, _>(user, "release", (), |d| d.release())
}

/// A device a session can migrate: a `ds_device` handle, shared (`Clone` is cheap, an `Arc`).
///
/// Lifetimes: sessions keep a clone of every device they are given, so a device is freed
/// (`ds_device_free`, then the [`MigratableDevice`] value is dropped) only after the last
/// session using it is freed and the caller's clones are gone. That is how "a device must not be
/// freed while a session that uses it runs" holds without the caller's help.
#[derive(Clone)]
pub struct Device {
    inner: Arc<DeviceInner>,
}

struct DeviceInner {
    raw: NonNull<sys::ds_device>,
    name: String,
    panics: Option<Arc<PanicRecord>>,
    /// The `Shim<D>` behind `user` for an ops device; dropped after `ds_device_free`.
    _shim: Option<Box<dyn Any + Send + Sync>>,
}

// SAFETY: the ds_device functions the crate calls on a handle may be called from any thread
// (devicestream.h, "Threads"); the shim is Send + Sync because D is.
unsafe impl Send for DeviceInner {}
unsafe impl Sync for DeviceInner {}

impl Drop for DeviceInner {
    fn drop(&mut self) {
        // Calls `release` for an ops device; `_shim` is dropped after this returns.
        unsafe { sys::ds_device_free(self.raw.as_ptr()) }
    }
}

impl Device {
    /// A built-in device from a spec string (the CLI's `--device`): `sim:size=1G,dirty-rate=64M`,
    /// `vfio-emu:size=64M`, `file:PATH`, `vfio:/dev/vfio/devices/vfioN`. A destination
    /// `sim:`/`vfio-emu:` device needs `size=` (equal to the source's).
    pub fn from_spec(spec: &str, role: Role) -> Result<Device> {
        let c = CString::new(spec).map_err(|_| Error::new(ErrorCode::Usage, format!("device spec {spec:?} contains a NUL byte")))?;
        let role = match role {
            Role::Source => sys::DS_ROLE_SOURCE,
            Role::Destination => sys::DS_ROLE_DESTINATION,
        };
        let mut err = ptr::null_mut();
        let raw = unsafe { sys::ds_device_from_spec(c.as_ptr(), role, &mut err) };
        let raw = match NonNull::new(raw) {
            Some(r) => {
                unsafe { Error::check(true, err, "ds_device_from_spec")? };
                r
            }
            None => return Err(unsafe { Error::check(false, err, "ds_device_from_spec") }.unwrap_err()),
        };
        Ok(Device { inner: Arc::new(DeviceInner { raw, name: spec.to_string(), panics: None, _shim: None }) })
    }

    /// A device the VMM implements. The library calls it until the last session using it and
    /// the last clone of the returned `Device` are dropped.
    pub fn new<D: MigratableDevice>(device: D) -> Result<Device> {
        Device::from_arc(Arc::new(device))
    }

    /// As [`Device::new`], for a device the VMM keeps using itself (to run it, inspect it).
    pub fn from_arc<D: MigratableDevice>(device: Arc<D>) -> Result<Device> {
        let info = device.info();
        let name = CString::new(info.name.clone()).map_err(|_| Error::new(ErrorCode::Usage, "the device name contains a NUL byte"))?;
        let panics = Arc::new(PanicRecord::default());
        let shim: Box<Shim<D>> = Box::new(Shim { device, panics: panics.clone() });
        let user = &*shim as *const Shim<D> as *mut c_void;
        let (kind, size, chunk) = match info.kind {
            DeviceKind::Addressable { size, tracking_chunk } => (sys::DS_DEVICE_ADDRESSABLE, size, tracking_chunk),
            DeviceKind::Stream => (sys::DS_DEVICE_STREAM, 0, 0),
        };
        let addressable = kind == sys::DS_DEVICE_ADDRESSABLE;
        let ops = sys::ds_device_ops {
            struct_size: std::mem::size_of::<sys::ds_device_ops>() as u32,
            kind,
            migration_flags: info.migration_flags.bits(),
            name: name.as_ptr(),
            size,
            tracking_chunk: chunk,
            initial_state: info.initial_state.raw(),
            reserved: 0,
            set_state: Some(t_set_state::<D>),
            precopy_info: info.has_precopy_info.then_some(t_precopy_info::<D> as _),
            stop_copy_size: info.has_stop_copy_size.then_some(t_stop_copy_size::<D> as _),
            read: (!addressable).then_some(t_read::<D> as _),
            write: (!addressable).then_some(t_write::<D> as _),
            data_fd: addressable.then_some(t_data_fd::<D> as _),
            dirty_bitmap: addressable.then_some(t_dirty_bitmap::<D> as _),
            save_config: Some(t_save_config::<D>),
            load_config: Some(t_load_config::<D>),
            digest: info.has_digest.then_some(t_digest::<D> as _),
            release: Some(t_release::<D>),
        };
        let mut err = ptr::null_mut();
        // `ops` and the name are copied by the library; `user` stays valid until `_shim` drops.
        let raw = unsafe { sys::ds_device_from_ops(&ops, user, &mut err) };
        let raw = match NonNull::new(raw) {
            Some(r) => {
                unsafe { Error::check(true, err, "ds_device_from_ops")? };
                r
            }
            None => return Err(unsafe { Error::check(false, err, "ds_device_from_ops") }.unwrap_err()),
        };
        Ok(Device { inner: Arc::new(DeviceInner { raw, name: info.name, panics: Some(panics), _shim: Some(shim) }) })
    }

    /// The device's name (its spec for a built-in device).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The message of the last panic caught in one of this device's callbacks, cleared by the
    /// call (`None` for built-in devices and devices whose callbacks never panicked).
    pub fn take_panic(&self) -> Option<String> {
        self.inner.panics.as_ref().and_then(|p| p.take())
    }

    pub(crate) fn peek_panic(&self) -> Option<String> {
        self.inner.panics.as_ref().and_then(|p| p.peek())
    }

    pub(crate) fn raw(&self) -> *mut sys::ds_device {
        self.inner.raw.as_ptr()
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device").field("name", &self.inner.name).finish_non_exhaustive()
    }
}
