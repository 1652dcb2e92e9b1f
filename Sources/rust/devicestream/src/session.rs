//! Sessions: [`Source`] and [`Destination`], their events, statistics, reports and cancel handle.

use crate::device::Device;
use crate::error::{Error, ErrorCode, Result};
use crate::options::Options;
use devicestream_sys as sys;
use std::ffi::{c_void, CStr, CString};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{self, NonNull};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

fn duration(ns: i64) -> Option<Duration> {
    (ns >= 0).then(|| Duration::from_nanos(ns as u64))
}

/// Which protection a session had (`DS_PROTECTION_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protection {
    /// Plaintext and unauthenticated ([`crate::Options::insecure`]).
    Insecure,
    /// TLS 1.3 with a pre-shared key.
    TlsPsk,
    /// TLS 1.3 with x509 certificates.
    TlsX509,
    Unknown(u32),
}

impl Protection {
    fn from_raw(v: u32) -> Protection {
        match v {
            sys::DS_PROTECTION_INSECURE => Protection::Insecure,
            sys::DS_PROTECTION_TLS_PSK => Protection::TlsPsk,
            sys::DS_PROTECTION_TLS_X509 => Protection::TlsX509,
            other => Protection::Unknown(other),
        }
    }
}

/// Why the source switched over (`DS_REASON_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SwitchoverReason {
    /// The predicted downtime fits the budget.
    Converged,
    /// Nothing is left to send.
    NothingToSend,
    /// Pre-copy did not converge; the policy says switch over.
    NonConvergence,
    /// The deadline was reached.
    Deadline,
    /// The devices have no pre-copy.
    NoPrecopy,
    /// External switchover: the VMM asked ([`Source::switchover`]).
    Requested,
    Unknown(u32),
}

impl SwitchoverReason {
    fn from_raw(v: u32) -> Option<SwitchoverReason> {
        Some(match v {
            sys::DS_REASON_NONE => return None,
            sys::DS_REASON_CONVERGED => SwitchoverReason::Converged,
            sys::DS_REASON_NOTHING_TO_SEND => SwitchoverReason::NothingToSend,
            sys::DS_REASON_NONCONVERGENCE => SwitchoverReason::NonConvergence,
            sys::DS_REASON_DEADLINE => SwitchoverReason::Deadline,
            sys::DS_REASON_NO_PRECOPY => SwitchoverReason::NoPrecopy,
            sys::DS_REASON_REQUESTED => SwitchoverReason::Requested,
            other => SwitchoverReason::Unknown(other),
        })
    }
}

/// A step of the two-phase handover (`DS_PHASE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandoverPhase {
    /// Source: all state, config and channel ends are sent.
    StateSent,
    /// Destination: the devices are loaded, validated, in STOP.
    LoadedSent,
    /// Source: the destination has loaded.
    LoadedReceived,
    /// Source: the point of no return.
    CommitSent,
    /// Destination: the devices may run (after [`Destination::resume`] with a hold).
    CommitReceived,
    /// Destination: the devices are RUNNING.
    Running,
    /// Source: the destination runs; the downtime is measured.
    ResumedReceived,
    Unknown(u32),
}

impl HandoverPhase {
    fn from_raw(v: u32) -> HandoverPhase {
        match v {
            sys::DS_PHASE_STATE_SENT => HandoverPhase::StateSent,
            sys::DS_PHASE_LOADED_SENT => HandoverPhase::LoadedSent,
            sys::DS_PHASE_LOADED_RECEIVED => HandoverPhase::LoadedReceived,
            sys::DS_PHASE_COMMIT_SENT => HandoverPhase::CommitSent,
            sys::DS_PHASE_COMMIT_RECEIVED => HandoverPhase::CommitReceived,
            sys::DS_PHASE_RUNNING => HandoverPhase::Running,
            sys::DS_PHASE_RESUMED_RECEIVED => HandoverPhase::ResumedReceived,
            other => HandoverPhase::Unknown(other),
        }
    }
}

/// A session's phase in [`Stats`] (`DS_SESSION_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionPhase {
    Idle,
    Setup,
    Precopy,
    ReadyToSwitchover,
    StopCopy,
    Handover,
    Verifying,
    Completed,
    Failed,
    Unknown(u32),
}

impl SessionPhase {
    fn from_raw(v: u32) -> SessionPhase {
        match v {
            sys::DS_SESSION_IDLE => SessionPhase::Idle,
            sys::DS_SESSION_SETUP => SessionPhase::Setup,
            sys::DS_SESSION_PRECOPY => SessionPhase::Precopy,
            sys::DS_SESSION_READY_TO_SWITCHOVER => SessionPhase::ReadyToSwitchover,
            sys::DS_SESSION_STOP_COPY => SessionPhase::StopCopy,
            sys::DS_SESSION_HANDOVER => SessionPhase::Handover,
            sys::DS_SESSION_VERIFYING => SessionPhase::Verifying,
            sys::DS_SESSION_COMPLETED => SessionPhase::Completed,
            sys::DS_SESSION_FAILED => SessionPhase::Failed,
            other => SessionPhase::Unknown(other),
        }
    }
}

/// What a session reports while it runs (`ds_event`, `DS_EVENT_*`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// Both ends: setup is done.
    SetupDone { duration: Option<Duration> },
    /// Source: a pre-copy round ended.
    Iteration { iteration: u64, bytes: u64, dirty_bytes: u64, predicted_downtime: Option<Duration>, duration: Option<Duration> },
    /// Destination: a round is loaded (`bytes`: all so far).
    RoundLoaded { round: u64, bytes: u64 },
    /// Source, external switchover: call [`Source::switchover`] (or a [`CancelHandle`]).
    ReadyToSwitchover { predicted_downtime: Option<Duration>, reason: Option<SwitchoverReason> },
    /// Source: the switchover starts.
    Switchover { predicted_downtime: Option<Duration>, reason: Option<SwitchoverReason> },
    /// Both ends: a handover step.
    Handover { phase: HandoverPhase },
    /// Both ends: bytes of one device.
    DeviceProgress { device: u32, bytes: u64 },
    /// Both ends: something the operator should know.
    Warning { text: String },
    /// An event kind this crate does not know (a newer library).
    Other { kind: u32 },
}

impl Event {
    /// # Safety
    /// `raw` points at a `ds_event` valid for the call.
    unsafe fn from_raw(raw: *const sys::ds_event) -> Event {
        // Read only what the library's struct_size covers; the rest stays zero.
        let mut e: sys::ds_event = std::mem::zeroed();
        let n = ((*raw).struct_size as usize).min(std::mem::size_of::<sys::ds_event>());
        ptr::copy_nonoverlapping(raw as *const u8, &mut e as *mut _ as *mut u8, n);
        let text = |p: *const std::ffi::c_char| if p.is_null() { String::new() } else { CStr::from_ptr(p).to_string_lossy().into_owned() };
        match e.kind {
            sys::DS_EVENT_SETUP_DONE => Event::SetupDone { duration: duration(e.duration_ns) },
            sys::DS_EVENT_ITERATION => Event::Iteration {
                iteration: e.iteration,
                bytes: e.bytes,
                dirty_bytes: e.dirty_bytes,
                predicted_downtime: duration(e.predicted_downtime_ns),
                duration: duration(e.duration_ns),
            },
            sys::DS_EVENT_ROUND_LOADED => Event::RoundLoaded { round: e.iteration, bytes: e.bytes },
            sys::DS_EVENT_READY_TO_SWITCHOVER => Event::ReadyToSwitchover {
                predicted_downtime: duration(e.predicted_downtime_ns),
                reason: SwitchoverReason::from_raw(e.reason),
            },
            sys::DS_EVENT_SWITCHOVER => {
                Event::Switchover { predicted_downtime: duration(e.predicted_downtime_ns), reason: SwitchoverReason::from_raw(e.reason) }
            }
            sys::DS_EVENT_HANDOVER => Event::Handover { phase: HandoverPhase::from_raw(e.phase) },
            sys::DS_EVENT_DEVICE_PROGRESS => Event::DeviceProgress { device: e.device, bytes: e.bytes },
            sys::DS_EVENT_WARNING => Event::Warning { text: text(e.text) },
            kind => Event::Other { kind },
        }
    }
}

/// The closure a session delivers its events to. It runs on library threads: it must return
/// promptly, and must not wait for or drop the session it belongs to (it may cancel it, or call
/// [`Source::switchover`] through a handle it captured).
pub type EventHandler = Box<dyn FnMut(&Event) + Send + 'static>;

/// An [`EventHandler`] where the library's `user` pointer can point. Calls are serialized by the
/// mutex (the library may call from several threads).
struct EventSlot(Mutex<EventHandler>);

unsafe extern "C" fn event_trampoline(event: *const sys::ds_event, user: *mut c_void) {
    if event.is_null() || user.is_null() {
        return;
    }
    // A panicking handler is caught here and never unwinds into the library; later events are
    // still delivered (the poisoned lock is taken anyway).
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let slot = &*(user as *const EventSlot);
        let e = Event::from_raw(event);
        let mut handler = slot.0.lock().unwrap_or_else(PoisonError::into_inner);
        (handler)(&e);
    }));
}

/// A live snapshot of a session (`ds_stats`; QEMU's `query-migrate` names where it has them).
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub phase: SessionPhase,
    pub elapsed: Duration,
    /// `None` until known.
    pub setup: Option<Duration>,
    /// Device bytes sent (source) or loaded (destination).
    pub transferred_bytes: u64,
    pub remaining_bytes: Option<u64>,
    pub iterations: u64,
    pub bandwidth_bytes_per_sec: Option<f64>,
    pub expected_downtime: Option<Duration>,
    /// `None` until measured.
    pub downtime: Option<Duration>,
}

impl Stats {
    fn from_raw(s: &sys::ds_stats) -> Stats {
        Stats {
            phase: SessionPhase::from_raw(s.phase),
            elapsed: Duration::from_nanos(s.elapsed_ns),
            setup: duration(s.setup_ns),
            transferred_bytes: s.transferred_bytes,
            remaining_bytes: (s.remaining_bytes >= 0).then_some(s.remaining_bytes as u64),
            iterations: s.iterations,
            bandwidth_bytes_per_sec: (s.bandwidth_bytes_per_sec > 0.0).then_some(s.bandwidth_bytes_per_sec),
            expected_downtime: duration(s.expected_downtime_ns),
            downtime: duration(s.downtime_ns),
        }
    }
}

/// The final report of a session (`ds_report`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Byte-exact and handed over.
    pub completed: bool,
    /// Why it failed (`None` when completed).
    pub error_code: Option<ErrorCode>,
    pub switchover_reason: Option<SwitchoverReason>,
    /// `None`: unknown.
    pub converged: Option<bool>,
    /// A cancel came after the commit (too late: the handover completed).
    pub cancelled_after_commit: bool,
    /// Every device's digest is equal at both ends.
    pub digests_verified: bool,
    pub devices: u32,
    pub total: Duration,
    pub setup: Duration,
    /// Measured from the source device leaving a running state to the destination's RUNNING.
    pub downtime: Option<Duration>,
    pub expected_downtime: Option<Duration>,
    pub downtime_limit: Duration,
    pub iterations: u64,
    pub precopy_bytes: u64,
    pub stopcopy_bytes: u64,
    pub wire_bytes: u64,
    /// Which protection the session had.
    pub protection: Protection,
}

impl Report {
    fn from_raw(r: &sys::ds_report) -> Report {
        Report {
            completed: r.completed == 1,
            error_code: (r.error_code != sys::DS_OK).then(|| ErrorCode::from_raw(r.error_code)),
            switchover_reason: SwitchoverReason::from_raw(r.switchover_reason),
            converged: match r.converged {
                1 => Some(true),
                0 => Some(false),
                _ => None,
            },
            cancelled_after_commit: r.cancelled_after_commit == 1,
            digests_verified: r.digests_verified == 1,
            devices: r.devices,
            total: Duration::from_nanos(r.total_ns),
            setup: Duration::from_nanos(r.setup_ns),
            downtime: duration(r.downtime_ns),
            expected_downtime: duration(r.expected_downtime_ns),
            downtime_limit: Duration::from_nanos(r.downtime_limit_ns),
            iterations: r.iterations,
            precopy_bytes: r.precopy_bytes,
            stopcopy_bytes: r.stopcopy_bytes,
            wire_bytes: r.wire_bytes,
            protection: Protection::from_raw(r.protection),
        }
    }
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Before the commit: the session fails with [`ErrorCode::Cancelled`]; the source's devices
    /// run again on the source, the destination's never run.
    Cancelled,
    /// After the commit: too late, the handover completes.
    TooLate,
    /// There is no session to cancel (a destination not listening yet, or the session value is
    /// gone). A source cancelled before it starts says [`CancelOutcome::Cancelled`]: its
    /// session then fails at once when started.
    NotRunning,
}

enum Target {
    Source(NonNull<sys::ds_source>),
    Dest(NonNull<sys::ds_dest>),
    Gone,
}

/// The session a [`CancelHandle`] reaches, until the session is dropped.
struct CancelCell(Mutex<Target>);

// SAFETY: ds_source_cancel / ds_dest_cancel may be called from any thread; the pointer is only
// used under the mutex, and the session sets it to `Gone` (under the mutex) before it frees it.
unsafe impl Send for CancelCell {}
unsafe impl Sync for CancelCell {}

impl CancelCell {
    fn cancel(&self) -> CancelOutcome {
        let t = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let rc = match *t {
            Target::Source(p) => unsafe { sys::ds_source_cancel(p.as_ptr()) },
            Target::Dest(p) => unsafe { sys::ds_dest_cancel(p.as_ptr()) },
            Target::Gone => -1,
        };
        match rc {
            1 => CancelOutcome::Cancelled,
            0 => CancelOutcome::TooLate,
            _ => CancelOutcome::NotRunning,
        }
    }

    fn detach(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Target::Gone;
    }
}

/// Cancels a session from any thread (QEMU's `migrate_cancel`, Cloud Hypervisor's `Abandon`).
/// `Send + Sync + Clone`; it does not keep the session alive: once the session is dropped,
/// [`CancelHandle::cancel`] returns [`CancelOutcome::NotRunning`].
#[derive(Clone)]
pub struct CancelHandle(Arc<CancelCell>);

impl CancelHandle {
    /// Cancels the session (see [`CancelOutcome`]). Safe to call from an event handler.
    pub fn cancel(&self) -> CancelOutcome {
        self.0.cancel()
    }
}

impl std::fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CancelHandle")
    }
}

fn device_list(devices: &[Device]) -> Result<Vec<*mut sys::ds_device>> {
    if devices.is_empty() {
        return Err(Error::new(ErrorCode::Usage, "a session needs at least one device"));
    }
    Ok(devices.iter().map(Device::raw).collect())
}

/// The session's error, with the panic of a device callback when one caused it.
fn explain(mut e: Error, devices: &[Device]) -> Error {
    if e.code == ErrorCode::Device {
        for d in devices {
            if let Some(p) = d.peek_panic() {
                e.message.push_str(&format!("; a Rust callback of device {:?} panicked in {p}", d.name()));
            }
        }
    }
    e
}

fn wait_timeout_ns(timeout: Option<Duration>) -> u64 {
    timeout.map_or(u64::MAX, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1).min(u64::MAX - 1))
}

fn c_addr(addr: &str) -> Result<CString> {
    CString::new(addr).map_err(|_| Error::new(ErrorCode::Usage, format!("address {addr:?} contains a NUL byte")))
}

fn raw_fds(fds: Vec<OwnedFd>) -> Result<Vec<i32>> {
    if fds.is_empty() {
        return Err(Error::new(ErrorCode::Usage, "attach_fds needs at least one socket"));
    }
    Ok(fds.into_iter().map(IntoRawFd::into_raw_fd).collect())
}

fn handler_slot(on_event: Option<EventHandler>) -> (Option<Box<EventSlot>>, sys::ds_event_fn, *mut c_void) {
    match on_event {
        Some(h) => {
            let slot = Box::new(EventSlot(Mutex::new(h)));
            let user = &*slot as *const EventSlot as *mut c_void;
            (Some(slot), Some(event_trampoline), user)
        }
        None => (None, None, ptr::null_mut()),
    }
}

fn state_error(what: &str) -> Error {
    Error::new(ErrorCode::State, format!("{what}: a session handle runs one session, and this one has started already"))
}

/// The source end of a live migration (`ds_source`).
///
/// Made with its devices and options, started once ([`Source::connect`] or
/// [`Source::attach_fds`]), which returns at once: the session runs on library threads. Then
/// [`Source::wait`] for the end, with [`Source::stats`], [`Source::switchover`] and cancel
/// ([`Source::cancel`], [`Source::cancel_handle`]) from any thread meanwhile. `Send + Sync`.
///
/// Dropping it cancels a running session and joins every library thread (`ds_source_free`);
/// only then are the event handler and the source's clones of its devices dropped. Do not drop
/// it from one of its own event handlers or device callbacks.
pub struct Source {
    raw: NonNull<sys::ds_source>,
    cancel: Arc<CancelCell>,
    started: bool,
    // Dropped after `ds_source_free` (Drop below), in this order.
    events: Option<Box<EventSlot>>,
    devices: Vec<Device>,
}

// SAFETY: every ds_source function may be called from any thread (devicestream.h, "Threads");
// the only `&mut self` methods start the session; the event slot is Mutex-guarded.
unsafe impl Send for Source {}
unsafe impl Sync for Source {}

impl Source {
    /// Starts migrating to the destination at `host_port` ("HOST:PORT") and returns at once.
    /// `on_event` gets every event, on library threads. Once per source.
    pub fn connect(&mut self, host_port: &str, on_event: Option<EventHandler>) -> Result<()> {
        if self.started {
            return Err(state_error("connect"));
        }
        let addr = c_addr(host_port)?;
        let (slot, f, user) = handler_slot(on_event);
        let mut err = ptr::null_mut();
        let rc = unsafe { sys::ds_source_connect(self.raw.as_ptr(), addr.as_ptr(), f, user, &mut err) };
        self.events = slot; // kept even on failure: the library may hold `user`
        unsafe { Error::check(rc == 0, err, "ds_source_connect")? };
        self.started = true;
        Ok(())
    }

    /// As [`Source::connect`], over sockets the VMM already connected, one per connection,
    /// channel 0 first. The library takes them: it closes them when the session ends, also when
    /// it fails.
    pub fn attach_fds(&mut self, sockets: Vec<OwnedFd>, on_event: Option<EventHandler>) -> Result<()> {
        if self.started {
            return Err(state_error("attach_fds"));
        }
        let fds = raw_fds(sockets)?;
        let (slot, f, user) = handler_slot(on_event);
        let mut err = ptr::null_mut();
        let rc = unsafe { sys::ds_source_attach_fds(self.raw.as_ptr(), fds.as_ptr(), fds.len(), f, user, &mut err) };
        self.events = slot;
        unsafe { Error::check(rc == 0, err, "ds_source_attach_fds")? };
        self.started = true;
        Ok(())
    }

    /// With [`Options::external_switchover`]: switch over after the current round.
    pub fn switchover(&self) {
        unsafe { sys::ds_source_switchover(self.raw.as_ptr()) };
    }

    /// Bytes the VMM itself moves during the downtime (its RAM): added to the prediction.
    pub fn set_external_pending(&self, bytes: u64) {
        unsafe { sys::ds_source_set_external_pending(self.raw.as_ptr(), bytes) };
    }
}

/// The destination end of a live migration (`ds_dest`): as [`Source`], with
/// [`Destination::listen`] or [`Destination::attach_fds`] to start, and
/// [`Destination::resume`] for a held resume ([`Options::hold_resume`]). Its devices start in
/// RESUMING. `Send + Sync`; dropping it cancels and joins as for [`Source`].
pub struct Destination {
    raw: NonNull<sys::ds_dest>,
    cancel: Arc<CancelCell>,
    started: bool,
    events: Option<Box<EventSlot>>,
    devices: Vec<Device>,
}

// SAFETY: as for Source.
unsafe impl Send for Destination {}
unsafe impl Sync for Destination {}

impl Destination {
    /// Binds `host_port` ("HOST:PORT"; port 0 picks one) and receives one migration on library
    /// threads; returns the bound port once listening.
    pub fn listen(&mut self, host_port: &str, on_event: Option<EventHandler>) -> Result<u16> {
        if self.started {
            return Err(state_error("listen"));
        }
        let addr = c_addr(host_port)?;
        let (slot, f, user) = handler_slot(on_event);
        let mut port: u16 = 0;
        let mut err = ptr::null_mut();
        let rc = {
            // Held so a CancelHandle's ds_dest_cancel cannot run meanwhile: the library stores
            // the new session in the handle without a lock, and ds_dest_cancel reads it.
            let _no_cancel = self.cancel.0.lock().unwrap_or_else(PoisonError::into_inner);
            unsafe { sys::ds_dest_listen(self.raw.as_ptr(), addr.as_ptr(), &mut port, f, user, &mut err) }
        };
        self.events = slot;
        unsafe { Error::check(rc == 0, err, "ds_dest_listen")? };
        self.started = true;
        Ok(port)
    }

    /// As [`Destination::listen`], over sockets the VMM already holds, one per connection of
    /// the source's session. The library takes them.
    pub fn attach_fds(&mut self, sockets: Vec<OwnedFd>, on_event: Option<EventHandler>) -> Result<()> {
        if self.started {
            return Err(state_error("attach_fds"));
        }
        let fds = raw_fds(sockets)?;
        let (slot, f, user) = handler_slot(on_event);
        let mut err = ptr::null_mut();
        let rc = {
            let _no_cancel = self.cancel.0.lock().unwrap_or_else(PoisonError::into_inner); // as in listen
            unsafe { sys::ds_dest_attach_fds(self.raw.as_ptr(), fds.as_ptr(), fds.len(), f, user, &mut err) }
        };
        self.events = slot;
        unsafe { Error::check(rc == 0, err, "ds_dest_attach_fds")? };
        self.started = true;
        Ok(())
    }

    /// With a resume hold: lets the devices run once the commit is in. Fails with
    /// [`ErrorCode::State`] before the session started.
    pub fn resume(&self) -> Result<()> {
        match unsafe { sys::ds_dest_resume(self.raw.as_ptr()) } {
            0 => Ok(()),
            _ => Err(Error::new(ErrorCode::State, "resume: the destination has no session yet (listen or attach_fds first)")),
        }
    }
}

/// What [`Source`] and [`Destination`] share: making one, waiting for its end, cancelling,
/// statistics, the report, and freeing it. The two differ only in which `ds_source_*` or
/// `ds_dest_*` function they call, so one body serves both.
macro_rules! session_common {
    ($ty:ident, $target:ident, role: $role:literal,
     new: $new:ident, wait: $wait:ident, stats: $stats:ident, report: $report:ident, free: $free:ident) => {
        impl $ty {
            #[doc = concat!("A ", $role, " for `devices` with `options` (copied). It keeps a clone of each device.")]
            pub fn new(devices: &[Device], options: &Options) -> Result<$ty> {
                let list = device_list(devices)?;
                let opts = options.to_raw()?;
                let mut err = ptr::null_mut();
                let raw = unsafe { sys::$new(list.as_ptr(), list.len(), opts.as_ptr(), &mut err) };
                let Some(raw) = NonNull::new(raw) else {
                    return Err(unsafe { Error::check(false, err, stringify!($new)) }.unwrap_err());
                };
                unsafe { Error::check(true, err, stringify!($new))? };
                Ok($ty {
                    raw,
                    cancel: Arc::new(CancelCell(Mutex::new(Target::$target(raw)))),
                    started: false,
                    events: None,
                    devices: devices.to_vec(),
                })
            }

            /// Waits for the session to end: the report when it completed, the error when it
            /// failed (the failed session's report is then `report()`). Every library thread of
            /// the session has been joined when it returns.
            pub fn wait(&self) -> Result<Report> {
                self.wait_timeout(None).map(|r| r.expect("an unbounded wait ends with a result"))
            }

            /// As `wait`, at most `timeout` (`None`: forever); `Ok(None)`: still running.
            pub fn wait_timeout(&self, timeout: Option<Duration>) -> Result<Option<Report>> {
                let mut err = ptr::null_mut();
                let rc = unsafe { sys::$wait(self.raw.as_ptr(), wait_timeout_ns(timeout), &mut err) };
                match rc {
                    1 => Ok(None),
                    0 => {
                        unsafe { Error::check(true, err, stringify!($wait))? };
                        self.report()
                            .map(Some)
                            .ok_or_else(|| Error::new(ErrorCode::State, "the session completed but has no report"))
                    }
                    _ => Err(explain(unsafe { Error::check(false, err, stringify!($wait)) }.unwrap_err(), &self.devices)),
                }
            }

            /// Cancels (see [`CancelOutcome`]).
            pub fn cancel(&self) -> CancelOutcome {
                self.cancel.cancel()
            }

            /// A handle that cancels this session from any thread.
            pub fn cancel_handle(&self) -> CancelHandle {
                CancelHandle(self.cancel.clone())
            }

            /// A live snapshot.
            pub fn stats(&self) -> Stats {
                let mut s = sys::ds_stats { struct_size: std::mem::size_of::<sys::ds_stats>() as u32, ..Default::default() };
                unsafe { sys::$stats(self.raw.as_ptr(), &mut s) };
                Stats::from_raw(&s)
            }

            /// The final report, once the session ended (`None` while it runs or before it starts).
            pub fn report(&self) -> Option<Report> {
                let mut r = sys::ds_report { struct_size: std::mem::size_of::<sys::ds_report>() as u32, ..Default::default() };
                (unsafe { sys::$report(self.raw.as_ptr(), &mut r) } == 0).then(|| Report::from_raw(&r))
            }

            #[doc = concat!("The devices this ", $role, " migrates.")]
            pub fn devices(&self) -> &[Device] {
                &self.devices
            }
        }

        impl Drop for $ty {
            fn drop(&mut self) {
                self.cancel.detach();
                // Cancels a running session and joins its threads: no callback runs after this.
                unsafe { sys::$free(self.raw.as_ptr()) };
            }
        }
    };
}

session_common!(Source, Source, role: "source",
    new: ds_source_new, wait: ds_source_wait, stats: ds_source_stats, report: ds_source_report, free: ds_source_free);
session_common!(Destination, Dest, role: "destination",
    new: ds_dest_new, wait: ds_dest_wait, stats: ds_dest_stats, report: ds_dest_report, free: ds_dest_free);
