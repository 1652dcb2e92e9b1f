//! Errors: a code (`DS_ERR_*` as an enum), a message and a hint.

use devicestream_sys as sys;
use std::ffi::CStr;
use std::fmt;

/// What kind of failure an [`Error`] is: `DS_ERR_*` of devicestream.h, one variant each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// `DS_ERR_CONNECT`: could not connect (refused, unreachable, bad address).
    Connect,
    /// `DS_ERR_PEER_CLOSED`: the peer closed or reset the connection early.
    PeerClosed,
    /// `DS_ERR_PROTOCOL`: the peer broke the protocol.
    Protocol,
    /// `DS_ERR_CORRUPTION`: a checksum, count or digest does not match.
    Corruption,
    /// `DS_ERR_TIMEOUT`: no progress within the timeout (or a hold ran out).
    Timeout,
    /// `DS_ERR_LOCAL_IO`: a local file, memory or thread resource failed.
    LocalIo,
    /// `DS_ERR_REJECTED`: the peer refused the session (credentials, busy).
    Rejected,
    /// `DS_ERR_REMOTE`: the peer reported an error of its own.
    Remote,
    /// `DS_ERR_USAGE`: a bad argument or option.
    Usage,
    /// `DS_ERR_DEVICE`: a device refused an operation (a callback returned an errno, or panicked).
    Device,
    /// `DS_ERR_ABORTED`: the scheduler gave up (non-convergence, deadline).
    Aborted,
    /// `DS_ERR_CANCELLED`: the caller cancelled.
    Cancelled,
    /// `DS_ERR_STATE`: the call does not fit the handle's state (e.g. connect twice).
    State,
    /// A code this crate does not know (a newer library).
    Unknown(i32),
}

impl ErrorCode {
    /// The code for a `DS_ERR_*` value.
    pub fn from_raw(code: i32) -> ErrorCode {
        match code {
            sys::DS_ERR_CONNECT => ErrorCode::Connect,
            sys::DS_ERR_PEER_CLOSED => ErrorCode::PeerClosed,
            sys::DS_ERR_PROTOCOL => ErrorCode::Protocol,
            sys::DS_ERR_CORRUPTION => ErrorCode::Corruption,
            sys::DS_ERR_TIMEOUT => ErrorCode::Timeout,
            sys::DS_ERR_LOCAL_IO => ErrorCode::LocalIo,
            sys::DS_ERR_REJECTED => ErrorCode::Rejected,
            sys::DS_ERR_REMOTE => ErrorCode::Remote,
            sys::DS_ERR_USAGE => ErrorCode::Usage,
            sys::DS_ERR_DEVICE => ErrorCode::Device,
            sys::DS_ERR_ABORTED => ErrorCode::Aborted,
            sys::DS_ERR_CANCELLED => ErrorCode::Cancelled,
            sys::DS_ERR_STATE => ErrorCode::State,
            other => ErrorCode::Unknown(other),
        }
    }

    /// The `DS_ERR_*` value.
    pub fn raw(self) -> i32 {
        match self {
            ErrorCode::Connect => sys::DS_ERR_CONNECT,
            ErrorCode::PeerClosed => sys::DS_ERR_PEER_CLOSED,
            ErrorCode::Protocol => sys::DS_ERR_PROTOCOL,
            ErrorCode::Corruption => sys::DS_ERR_CORRUPTION,
            ErrorCode::Timeout => sys::DS_ERR_TIMEOUT,
            ErrorCode::LocalIo => sys::DS_ERR_LOCAL_IO,
            ErrorCode::Rejected => sys::DS_ERR_REJECTED,
            ErrorCode::Remote => sys::DS_ERR_REMOTE,
            ErrorCode::Usage => sys::DS_ERR_USAGE,
            ErrorCode::Device => sys::DS_ERR_DEVICE,
            ErrorCode::Aborted => sys::DS_ERR_ABORTED,
            ErrorCode::Cancelled => sys::DS_ERR_CANCELLED,
            ErrorCode::State => sys::DS_ERR_STATE,
            ErrorCode::Unknown(c) => c,
        }
    }
}

/// A failure: what kind ([`ErrorCode`]), what failed and where (`message`), and what to do about
/// it (`hint`, when the library has one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    pub hint: Option<String>,
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error made on the Rust side.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Error {
        Error { code, message: message.into(), hint: None }
    }

    pub(crate) fn with_hint(mut self, hint: impl Into<String>) -> Error {
        self.hint = Some(hint.into());
        self
    }

    /// Copies a `ds_error` and frees it (exactly once: it is consumed here).
    ///
    /// # Safety
    /// `raw` is a live `ds_error` from the library that nothing else frees.
    pub(crate) unsafe fn take(raw: *mut sys::ds_error) -> Error {
        let code = ErrorCode::from_raw(sys::ds_error_code(raw));
        let message = cstr(sys::ds_error_message(raw)).unwrap_or_else(|| "unknown error".into());
        let hint = cstr(sys::ds_error_hint(raw));
        sys::ds_error_free(raw);
        Error { code, message, hint }
    }

    /// The result of a call that failed (`ok == false`) or succeeded, taking the library's error.
    ///
    /// # Safety
    /// `raw` is null or a live `ds_error` the call stored.
    pub(crate) unsafe fn check(ok: bool, raw: *mut sys::ds_error, what: &str) -> Result<()> {
        match (ok, raw.is_null()) {
            (true, true) => Ok(()),
            (true, false) => {
                sys::ds_error_free(raw);
                Ok(())
            }
            (false, false) => Err(Error::take(raw)),
            (false, true) => Err(Error::new(ErrorCode::Unknown(-1), format!("{what} failed and the library gave no error"))),
        }
    }
}

unsafe fn cstr(p: *const std::ffi::c_char) -> Option<String> {
    (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " ({h})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}
