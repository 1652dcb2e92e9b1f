//! DeviceStream for Rust VMMs: live migration of device state (pre-copy rounds while the device
//! runs, a switchover that fits a downtime budget, a two-phase handover), over the C ABI of
//! `libdevicestream.so.1` (the `devicestream-sys` crate). No crates.io dependencies.
//!
//! The pieces:
//! - [`Device`]: a built-in device from a spec ([`Device::from_spec`]), or the VMM's own, a type
//!   implementing [`MigratableDevice`] ([`Device::new`], [`Device::from_arc`]): VFIO state
//!   transitions, pre-copy info, a data fd and a dirty bitmap for addressable state or read/write
//!   for an ordered stream, config save/load, a digest.
//! - [`Options`]: a builder (connections, PSK, downtime limit, policy, external switchover, resume
//!   hold...). [`Key`] makes and reads key files as `devstream --psk-file` does.
//! - [`Source`] and [`Destination`]: one session each, started with `connect`/`listen` or
//!   `attach_fds` (sockets the VMM holds), then `wait`; `stats`, `switchover`, `resume` and
//!   cancel from any thread. [`CancelHandle`] is `Send + Sync + Clone`.
//! - [`Event`]s go to a boxed `FnMut(&Event) + Send` closure ([`EventHandler`]); [`Report`] and
//!   [`Stats`] mirror `ds_report` and `ds_stats`.
//! - [`Error`]: an [`ErrorCode`] (one variant per `DS_ERR_*`), a message and a hint.
//!
//! Lifetimes and threads:
//! - Every handle is owned by one value whose `Drop` frees it exactly once. Sessions keep clones
//!   of their [`Device`]s (an `Arc`), so a device always outlives the sessions using it; a
//!   session's `Drop` cancels it if it runs and joins the library's threads before its event
//!   handler and devices are released.
//! - Device callbacks and event handlers run on library threads. They must return promptly and
//!   must not wait for or drop their own session. A panic in one is caught at the C boundary
//!   (`catch_unwind` in every trampoline): a device callback then returns `-ENOTRECOVERABLE` and
//!   the session fails with [`ErrorCode::Device`], its message naming the panic; a panicking
//!   event handler loses that one event.
//!
//! Linking: `devicestream-sys` links `libdevicestream.so` from `$DEVICESTREAM_LIB_DIR` (default
//! `<repo>/.build/cabi/lib`, made by `Tests/CABI/build-library.sh`); this crate's tests and
//! examples get an rpath to it. A VMM adds its own rpath (from `DEP_DEVICESTREAM_LIB_DIR` in its
//! build script) or installs the library where the loader looks.
//!
//! ```no_run
//! use devicestream::{Destination, Device, Event, Key, Options, Role, Source};
//!
//! // Destination (one host): a simulated device of the source's size, a fresh key.
//! let key = Key::generate_file("/tmp/ds.key")?;
//! let mut dst = Destination::new(&[Device::from_spec("sim:size=64M", Role::Destination)?], &Options::new().psk(key))?;
//! let port = dst.listen("127.0.0.1:0", None)?;
//!
//! // Source (the other): the same key, a device, events to a closure.
//! let options = Options::new().psk(Key::from_file("/tmp/ds.key")?);
//! let mut src = Source::new(&[Device::from_spec("sim:size=64M,dirty-rate=8M", Role::Source)?], &options)?;
//! src.connect(&format!("127.0.0.1:{port}"), Some(Box::new(|e: &Event| println!("{e:?}"))))?;
//! let report = src.wait()?;
//! assert!(report.completed && report.digests_verified);
//! dst.wait()?;
//! # Ok::<(), devicestream::Error>(())
//! ```

mod device;
mod error;
mod options;
mod session;

pub use device::{Access, Device, DeviceInfo, DeviceKind, DeviceState, Errno, MigratableDevice, MigrationFlags, PrecopyInfo, Role};
pub use error::{Error, ErrorCode, Result};
pub use options::{Backend, Key, Options, Policy};
pub use session::{
    CancelHandle, CancelOutcome, Destination, Event, EventHandler, HandoverPhase, Protection, Report, SessionPhase, Source, Stats,
    SwitchoverReason,
};

/// The library's ABI version (`ds_abi_version`): `(major, minor)`.
pub fn abi_version() -> (u16, u16) {
    let v = unsafe { devicestream_sys::ds_abi_version() };
    ((v >> 16) as u16, (v & 0xffff) as u16)
}

/// Whether the loaded library has the ABI major this crate was written for.
pub fn abi_compatible() -> bool {
    abi_version().0 as u32 == devicestream_sys::DS_ABI_VERSION_MAJOR
}
