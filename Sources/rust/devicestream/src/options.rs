//! Session options (a builder) and pre-shared keys.

use crate::error::{Error, ErrorCode, Result};
use devicestream_sys as sys;
use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::ptr::{self, NonNull};
use std::time::Duration;

/// What the source does when pre-copy does not converge (`DS_POLICY_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Keep iterating until the deadline, then abort (`DS_POLICY_WAIT`).
    Wait,
    /// Switch over anyway (`DS_POLICY_SWITCHOVER`).
    Switchover,
    /// Abort at once, staying on the source (`DS_POLICY_ABORT`).
    Abort,
}

/// The I/O backend (`DS_BACKEND_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// io_uring where the kernel allows it, else blocking.
    Auto,
    IoUring,
    /// Plain syscalls: for hosts whose seccomp filter forbids io_uring.
    Blocking,
}

/// A TLS 1.3 pre-shared key: at least 32 bytes, the same at both ends. Its bytes are wiped when
/// it is dropped and never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(Vec<u8>);

impl Key {
    /// The smallest key the library accepts.
    pub const MIN_LEN: usize = 32;

    /// A key from bytes (checked when a session is made: at least [`Key::MIN_LEN`]).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Key {
        Key(bytes.into())
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Makes a fresh key (32 bytes from /dev/urandom) and writes it as hex, with a newline, to a
    /// new file at `path` that only its owner can read (0600), replacing what was there. Give the
    /// file to the other end ([`Key::from_file`], or `devstream --psk-file`).
    pub fn generate_file(path: impl AsRef<Path>) -> Result<Key> {
        let path = path.as_ref();
        let mut bytes = vec![0u8; Self::MIN_LEN];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|e| Error::new(ErrorCode::LocalIo, format!("cannot read random bytes for a key from /dev/urandom: {e}")))?;
        let key = Key(bytes);
        let mut hex = String::with_capacity(2 * Self::MIN_LEN + 1);
        for b in &key.0 {
            hex.push_str(&format!("{b:02x}"));
        }
        hex.push('\n');
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tmp = std::path::PathBuf::from(tmp);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(hex.as_bytes())?;
                f.sync_all()
            })
            .and_then(|_| std::fs::rename(&tmp, path));
        wipe(unsafe { hex.as_bytes_mut() });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::new(ErrorCode::LocalIo, format!("cannot write the key file {}: {e}", path.display())));
        }
        Ok(key)
    }

    /// Reads a key file as `devstream --psk-file` does, strictly: a regular file that neither
    /// its group nor others can read or write (0600 or 0400), holding the key as hex — at least
    /// 64 hex digits (32 bytes), an even number, nothing but whitespace around them. Errors never
    /// quote the file's content.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Key> {
        use std::os::unix::fs::PermissionsExt;
        let path = path.as_ref();
        let hint = format!("make one with `(umask 077; openssl rand -hex 32 > {})` or Key::generate_file", path.display());
        let unreadable = |e: std::io::Error| {
            Error::new(ErrorCode::Usage, format!("key file {}: cannot read it ({e})", path.display())).with_hint(hint.clone())
        };
        let mut file = std::fs::File::open(path).map_err(unreadable)?;
        let meta = file.metadata().map_err(unreadable)?;
        if !meta.is_file() {
            return Err(Error::new(ErrorCode::Usage, format!("key file {}: not a regular file", path.display())).with_hint(hint));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::new(
                ErrorCode::Usage,
                format!(
                    "key file {}: accessible by others (mode {mode:o}): a key others can read is no secret; make it private with `chmod 600 {}`",
                    path.display(),
                    path.display()
                ),
            )
            .with_hint(format!("chmod 600 {}", path.display())));
        }
        let mut raw = Vec::new();
        file.read_to_end(&mut raw).map_err(unreadable)?;
        let start = raw.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(raw.len());
        let end = raw.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |i| i + 1);
        let text = &raw[start..end];
        let result = if let Some(bad) = text.iter().position(|c| !c.is_ascii_hexdigit()) {
            Err(Error::new(
                ErrorCode::Usage,
                format!(
                    "key file {}: holds something other than hex digits (at byte {}): it must hold the key as hex, at least {} digits, with nothing else but whitespace around them",
                    path.display(),
                    start + bad,
                    2 * Self::MIN_LEN
                ),
            )
            .with_hint(hint))
        } else if text.len() % 2 != 0 || text.len() < 2 * Self::MIN_LEN {
            Err(Error::new(
                ErrorCode::Usage,
                format!(
                    "key file {}: holds {} hex digits; a key is an even number of them, at least {} ({} bytes)",
                    path.display(),
                    text.len(),
                    2 * Self::MIN_LEN,
                    Self::MIN_LEN
                ),
            )
            .with_hint(hint))
        } else {
            let nibble = |c: u8| (c as char).to_digit(16).unwrap() as u8;
            Ok(Key(text.chunks(2).map(|p| nibble(p[0]) << 4 | nibble(p[1])).collect()))
        };
        wipe(&mut raw);
        result
    }
}

fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // Volatile so the wipe of memory about to be freed is not optimized away.
        unsafe { ptr::write_volatile(b, 0) };
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({} bytes)", self.0.len())
    }
}

/// Options for a source or a destination, built by value:
///
/// ```no_run
/// # use devicestream::{Options, Policy, Key};
/// # use std::time::Duration;
/// let options = Options::new()
///     .connections(2)
///     .psk(Key::from_file("/run/vmm/migration.key")?)
///     .downtime_limit(Duration::from_millis(300))
///     .policy(Policy::Abort);
/// # Ok::<(), devicestream::Error>(())
/// ```
///
/// What is not set keeps the library's default (`ds_options_new`): 2 connections, 300 ms
/// downtime limit, policy [`Policy::Wait`], 60 s deadline, 30 s stall timeout, no key (a session
/// then refuses to start: give [`Options::psk`], or [`Options::insecure`]), automatic switchover, no resume hold. Values are checked when a session is made
/// ([`crate::Source::new`], [`crate::Destination::new`]), which copies them.
#[derive(Debug, Clone, Default)]
pub struct Options {
    connections: Option<u32>,
    psk: Option<Key>,
    insecure: bool,
    downtime_limit: Option<Duration>,
    policy: Option<Policy>,
    deadline: Option<Option<Duration>>,
    timeout: Option<Duration>,
    backend: Option<Backend>,
    external_switchover: bool,
    hold_resume: Option<Duration>,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Options {
    /// The library's defaults.
    pub fn new() -> Options {
        Options::default()
    }
    /// TCP connections (channels), 1..=64.
    pub fn connections(mut self, n: u32) -> Options {
        self.connections = Some(n);
        self
    }
    /// TLS 1.3 with this pre-shared key (the same at both ends).
    pub fn psk(mut self, key: Key) -> Options {
        self.psk = Some(key);
        self
    }
    /// Allow a session without a key: plaintext and unauthenticated, on any address (loopback
    /// included). It gives up all protection: any local user can connect, anyone on the path can
    /// read or change the data. Without it (and without `psk`), a session refuses to start.
    pub fn insecure(mut self, allow: bool) -> Options {
        self.insecure = allow;
        self
    }
    /// The downtime budget the switchover must fit (> 0).
    pub fn downtime_limit(mut self, limit: Duration) -> Options {
        self.downtime_limit = Some(limit);
        self
    }
    /// What to do when pre-copy does not converge.
    pub fn policy(mut self, policy: Policy) -> Options {
        self.policy = Some(policy);
        self
    }
    /// Give up (or switch over, per policy) this long after the start; `None`: no deadline.
    pub fn deadline(mut self, deadline: Option<Duration>) -> Options {
        self.deadline = Some(deadline);
        self
    }
    /// Fail when the peer makes no progress for this long (> 0).
    pub fn timeout(mut self, timeout: Duration) -> Options {
        self.timeout = Some(timeout);
        self
    }
    /// The I/O backend.
    pub fn backend(mut self, backend: Backend) -> Options {
        self.backend = Some(backend);
        self
    }
    /// Source: the VMM switches over itself ([`crate::Source::switchover`]) after
    /// [`crate::Event::ReadyToSwitchover`].
    pub fn external_switchover(mut self, on: bool) -> Options {
        self.external_switchover = on;
        self
    }
    /// Destination: after the source's commit, the devices wait in STOP until
    /// [`crate::Destination::resume`], at most `timeout` (then the session fails with both ends
    /// stopped); `None` turns the hold off.
    pub fn hold_resume(mut self, timeout: Option<Duration>) -> Options {
        self.hold_resume = timeout;
        self
    }

    /// A `ds_options` with these settings, freed when the returned value drops.
    pub(crate) fn to_raw(&self) -> Result<RawOptions> {
        let raw =
            NonNull::new(unsafe { sys::ds_options_new() }).ok_or_else(|| Error::new(ErrorCode::LocalIo, "ds_options_new returned NULL"))?;
        let o = RawOptions(raw);
        let p = o.0.as_ptr();
        let mut err = ptr::null_mut();
        unsafe {
            if let Some(n) = self.connections {
                Error::check(sys::ds_options_set_connections(p, n, &mut err) == 0, err, "ds_options_set_connections")?;
            }
            if let Some(k) = &self.psk {
                Error::check(sys::ds_options_set_psk(p, k.0.as_ptr(), k.0.len(), &mut err) == 0, err, "ds_options_set_psk")?;
            }
            sys::ds_options_set_insecure(p, self.insecure as i32);
            if let Some(d) = self.downtime_limit {
                Error::check(sys::ds_options_set_downtime_limit_ns(p, nanos(d), &mut err) == 0, err, "ds_options_set_downtime_limit_ns")?;
            }
            if let Some(policy) = self.policy {
                let v = match policy {
                    Policy::Wait => sys::DS_POLICY_WAIT,
                    Policy::Switchover => sys::DS_POLICY_SWITCHOVER,
                    Policy::Abort => sys::DS_POLICY_ABORT,
                };
                Error::check(sys::ds_options_set_policy(p, v, &mut err) == 0, err, "ds_options_set_policy")?;
            }
            if let Some(d) = self.deadline {
                sys::ds_options_set_deadline_ns(p, d.map_or(0, |d| nanos(d).max(1)));
            }
            if let Some(t) = self.timeout {
                Error::check(sys::ds_options_set_timeout_ns(p, nanos(t), &mut err) == 0, err, "ds_options_set_timeout_ns")?;
            }
            if let Some(b) = self.backend {
                let v = match b {
                    Backend::Auto => sys::DS_BACKEND_AUTO,
                    Backend::IoUring => sys::DS_BACKEND_IO_URING,
                    Backend::Blocking => sys::DS_BACKEND_BLOCKING,
                };
                Error::check(sys::ds_options_set_backend(p, v, &mut err) == 0, err, "ds_options_set_backend")?;
            }
            sys::ds_options_external_switchover(p, self.external_switchover as i32);
            sys::ds_options_hold_resume(p, self.hold_resume.map_or(0, |d| nanos(d).max(1)));
        }
        Ok(o)
    }
}

/// An owned `ds_options`.
pub(crate) struct RawOptions(NonNull<sys::ds_options>);

impl RawOptions {
    pub(crate) fn as_ptr(&self) -> *const sys::ds_options {
        self.0.as_ptr()
    }
}

impl Drop for RawOptions {
    fn drop(&mut self) {
        unsafe { sys::ds_options_free(self.0.as_ptr()) }
    }
}
