//! What the tests share: a Rust "VMM" device with its state in memory (an memfd, mapped), a
//! thread that dirties it while it runs, and helpers. No crates: the few libc and libxxhash
//! functions are declared here.
#![allow(dead_code)]

use devicestream::{Access, DeviceInfo, DeviceState, Errno, MigratableDevice, PrecopyInfo};
use std::ffi::{c_char, c_int, c_uint, c_void};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

extern "C" {
    fn memfd_create(name: *const c_char, flags: c_uint) -> c_int;
    fn ftruncate(fd: c_int, length: i64) -> c_int;
    fn mmap(addr: *mut c_void, length: usize, prot: c_int, flags: c_int, fd: c_int, offset: i64) -> *mut c_void;
    fn munmap(addr: *mut c_void, length: usize) -> c_int;
}

#[link(name = "xxhash")]
extern "C" {
    /// XXH3-64 with seed 0: the digest the library's sim devices use.
    fn XXH3_64bits(data: *const c_void, len: usize) -> u64;
}

const PROT_READ: c_int = 1;
const PROT_WRITE: c_int = 2;
const MAP_SHARED: c_int = 1;
const MFD_CLOEXEC: c_uint = 1;

/// XXH3-64 of `bytes`.
pub fn xxh3(bytes: &[u8]) -> u64 {
    unsafe { XXH3_64bits(bytes.as_ptr() as *const c_void, bytes.len()) }
}

/// Shared memory: an memfd of `size` bytes mapped read-write (the library preads/pwrites the fd,
/// the VMM touches the mapping: both see the same pages).
pub struct Memory {
    fd: OwnedFd,
    base: *mut u8,
    size: usize,
}

// SAFETY: the mapping lives as long as `Memory`; who writes where is the device's business
// (the dirtier writes only while the gate says the device runs).
unsafe impl Send for Memory {}
unsafe impl Sync for Memory {}

impl Memory {
    pub fn new(size: usize) -> Memory {
        unsafe {
            let fd = memfd_create(c"rust-vmm-device".as_ptr(), MFD_CLOEXEC);
            assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(fd);
            use std::os::fd::AsRawFd;
            assert_eq!(ftruncate(fd.as_raw_fd(), size as i64), 0, "ftruncate: {}", std::io::Error::last_os_error());
            let p = mmap(std::ptr::null_mut(), size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.as_raw_fd(), 0);
            assert!(p as isize != -1, "mmap: {}", std::io::Error::last_os_error());
            Memory { fd, base: p as *mut u8, size }
        }
    }
    pub fn bytes(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.base, self.size) }
    }
    /// # Safety
    /// No other thread reads or writes these bytes meanwhile through a Rust reference.
    unsafe fn write_u64(&self, offset: usize, v: u64) {
        std::ptr::write_unaligned(self.base.add(offset) as *mut u64, v);
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        unsafe { munmap(self.base as *mut c_void, self.size) };
    }
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The config blob a device writes and checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigFormat {
    /// "RUSTVMM1", the size, a generation: what a Rust VMM's own device might save.
    Rust,
    /// What `devstream receive --device sim:size=N` accepts: the library's sim device config,
    /// 64 bytes: "DSSIMCFG" (a little-endian u64), version 1, the size, then 40 bytes of the
    /// device's own (seed, generation, ...), which the destination keeps without checking.
    Sim,
}

/// Which callback panics, to test that a panic fails the session and nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PanicIn {
    Nothing,
    SaveConfig,
    DirtyBitmapAfter(u64),
}

/// VmmDevice values alive, and `release` calls: to check that every device is released once
/// and dropped once.
pub static LIVE_DEVICES: AtomicU64 = AtomicU64::new(0);
pub static RELEASES: AtomicU64 = AtomicU64::new(0);

struct Gate {
    running: bool,
}

/// The VMM's device: `size` bytes of memory at `chunk` granularity, a dirty bitmap, the VFIO
/// state machine as the library drives it, and (for a source) a thread dirtying random chunks
/// while the device runs.
pub struct VmmDevice {
    pub name: String,
    pub memory: Memory,
    pub chunk: usize,
    source: bool,
    config: ConfigFormat,
    panic_in: PanicIn,
    state: Mutex<(DeviceState, bool)>, // (state, everything pending for the next bitmap read)
    gate: Mutex<Gate>,
    gate_cv: Condvar,
    bitmap: Vec<AtomicU64>,
    bitmap_calls: AtomicU64,
    /// Every arc the library asked for, in order.
    pub transitions: Mutex<Vec<(DeviceState, DeviceState)>>,
    /// Chunk writes by the dirtier so far.
    pub writes: AtomicU64,
    stop: AtomicBool,
    dirtier: Mutex<Option<JoinHandle<()>>>,
    loaded_config: Mutex<Option<Vec<u8>>>,
}

impl VmmDevice {
    fn make(name: &str, size: usize, chunk: usize, source: bool, config: ConfigFormat, panic_in: PanicIn) -> VmmDevice {
        let memory = Memory::new(size);
        let chunks = size.div_ceil(chunk);
        let initial = if source { DeviceState::Running } else { DeviceState::Resuming };
        LIVE_DEVICES.fetch_add(1, Ordering::SeqCst);
        VmmDevice {
            name: name.into(),
            memory,
            chunk,
            source,
            config,
            panic_in,
            state: Mutex::new((initial, false)),
            gate: Mutex::new(Gate { running: source }),
            gate_cv: Condvar::new(),
            bitmap: (0..chunks.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            bitmap_calls: AtomicU64::new(0),
            transitions: Mutex::new(Vec::new()),
            writes: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            dirtier: Mutex::new(None),
            loaded_config: Mutex::new(None),
        }
    }

    /// A source device with content (half compressible pages, half random), in RUNNING, with a
    /// dirtier thread writing `chunks_per_ms` chunks a millisecond (90% within the first 1/16
    /// of the memory) while the device runs.
    pub fn source(name: &str, size: usize, chunk: usize, chunks_per_ms: u32, config: ConfigFormat, panic_in: PanicIn) -> Arc<VmmDevice> {
        let d = Arc::new(Self::make(name, size, chunk, true, config, panic_in));
        for page in 0..size / 4096 {
            for w in 0..512 {
                let v = if page % 2 == 0 { (page as u64) << 32 | (w as u64 & 0xff) } else { mix((page * 512 + w) as u64) };
                unsafe { d.memory.write_u64(page * 4096 + w * 8, v) };
            }
        }
        if chunks_per_ms > 0 {
            let me = d.clone();
            let h = std::thread::Builder::new().name("vmm-dirtier".into()).spawn(move || me.dirty(chunks_per_ms)).unwrap();
            *d.dirtier.lock().unwrap() = Some(h);
        }
        d
    }

    /// A destination device of `size` zero bytes in RESUMING.
    pub fn destination(name: &str, size: usize, chunk: usize, config: ConfigFormat) -> Arc<VmmDevice> {
        Arc::new(Self::make(name, size, chunk, false, config, PanicIn::Nothing))
    }

    fn dirty(&self, chunks_per_ms: u32) {
        let chunks = self.memory.size / self.chunk;
        let hot = (chunks / 16).max(1);
        let mut r = 0x1234_5678_9abc_def0u64;
        while !self.stop.load(Ordering::Relaxed) {
            {
                // Writes happen only while the device runs: set_state closes the gate (waiting
                // for this batch) before the device leaves a running state.
                let mut g = self.gate.lock().unwrap();
                while !g.running && !self.stop.load(Ordering::Relaxed) {
                    g = self.gate_cv.wait(g).unwrap();
                }
                if self.stop.load(Ordering::Relaxed) {
                    return;
                }
                for _ in 0..chunks_per_ms {
                    r = mix(r);
                    let c = if r % 10 < 9 { (r >> 8) as usize % hot } else { (r >> 8) as usize % chunks };
                    let off = c * self.chunk + ((r >> 40) as usize % (self.chunk / 8)) * 8;
                    unsafe { self.memory.write_u64(off, r) };
                    self.bitmap[c / 64].fetch_or(1 << (c % 64), Ordering::Release);
                    self.writes.fetch_add(1, Ordering::Relaxed);
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The device's current state.
    pub fn state(&self) -> DeviceState {
        self.state.lock().unwrap().0
    }

    /// XXH3-64 of the memory.
    pub fn memory_digest(&self) -> u64 {
        let _g = self.gate.lock().unwrap();
        xxh3(self.memory.bytes())
    }

    /// Stops the dirtier thread (also done on drop).
    pub fn stop_dirtier(&self) {
        self.stop.store(true, Ordering::Relaxed);
        {
            let _g = self.gate.lock().unwrap();
            self.gate_cv.notify_all();
        }
        if let Some(h) = self.dirtier.lock().unwrap().take() {
            h.join().unwrap();
        }
    }

    fn config_bytes(&self) -> Vec<u8> {
        let size = self.memory.size as u64;
        let mut out = Vec::with_capacity(64);
        match self.config {
            ConfigFormat::Rust => {
                out.extend_from_slice(b"RUSTVMM1");
                out.extend_from_slice(&size.to_le_bytes());
                out.extend_from_slice(&7u64.to_le_bytes());
            }
            ConfigFormat::Sim => {
                out.extend_from_slice(b"DSSIMCFG");
                out.extend_from_slice(&1u64.to_le_bytes());
                out.extend_from_slice(&size.to_le_bytes());
                for i in 0..5u64 {
                    out.extend_from_slice(&mix(i).to_le_bytes());
                }
            }
        }
        out
    }
}

impl Drop for VmmDevice {
    fn drop(&mut self) {
        LIVE_DEVICES.fetch_sub(1, Ordering::SeqCst);
        self.stop_dirtier();
    }
}

impl MigratableDevice for VmmDevice {
    fn info(&self) -> DeviceInfo {
        let initial = if self.source { DeviceState::Running } else { DeviceState::Resuming };
        DeviceInfo::addressable(self.name.clone(), self.memory.size as u64, self.chunk as u64, initial).with_digest()
    }

    fn set_state(&self, from: DeviceState, to: DeviceState) -> Result<(), Errno> {
        let mut s = self.state.lock().unwrap();
        if s.0 != from {
            return Err(Errno::EINVAL);
        }
        if !to.is_running() {
            self.gate.lock().unwrap().running = false; // waits for the dirtier's batch
        }
        if to.is_saving() && !from.is_saving() {
            s.1 = true; // a new migration stream: everything is pending
        }
        if !to.is_saving() {
            s.1 = false;
        }
        s.0 = to;
        if to.is_running() && self.source {
            self.gate.lock().unwrap().running = true;
            self.gate_cv.notify_all();
        }
        self.transitions.lock().unwrap().push((from, to));
        Ok(())
    }

    fn precopy_info(&self) -> Result<PrecopyInfo, Errno> {
        Err(Errno::ENOTSUP) // not declared: the library measures the dirty bitmap
    }

    fn data_fd(&self, access: Access) -> Result<BorrowedFd<'_>, Errno> {
        let s = self.state();
        match access {
            Access::Save if s.is_saving() => Ok(self.memory.fd.as_fd()),
            Access::Load if s == DeviceState::Resuming => Ok(self.memory.fd.as_fd()),
            _ => Err(Errno::EINVAL),
        }
    }

    fn dirty_bitmap(&self, out: &mut [u64], clear: bool) -> Result<(), Errno> {
        let calls = self.bitmap_calls.fetch_add(1, Ordering::Relaxed) + 1;
        if let PanicIn::DirtyBitmapAfter(n) = self.panic_in {
            if calls > n {
                panic!("{EXPECTED_PANIC}the VMM's dirty bitmap is gone (call {calls})");
            }
        }
        let chunks = self.memory.size.div_ceil(self.chunk);
        let mut s = self.state.lock().unwrap();
        if s.1 {
            for (w, word) in out.iter_mut().enumerate() {
                let valid = chunks.saturating_sub(w * 64).min(64);
                *word |= if valid == 64 { u64::MAX } else { (1u64 << valid) - 1 };
            }
            if clear {
                s.1 = false;
                for b in &self.bitmap {
                    b.store(0, Ordering::Relaxed);
                }
            }
        } else {
            for (word, b) in out.iter_mut().zip(&self.bitmap) {
                *word |= if clear { b.swap(0, Ordering::AcqRel) } else { b.load(Ordering::Acquire) };
            }
        }
        Ok(())
    }

    fn save_config(&self) -> Result<Vec<u8>, Errno> {
        if self.panic_in == PanicIn::SaveConfig {
            panic!("{EXPECTED_PANIC}the VMM cannot serialize its device config");
        }
        Ok(self.loaded_config.lock().unwrap().clone().unwrap_or_else(|| self.config_bytes()))
    }

    fn load_config(&self, config: &[u8]) -> Result<(), Errno> {
        if self.state() != DeviceState::Resuming {
            return Err(Errno::EINVAL);
        }
        let mine = self.config_bytes();
        if config.len() != mine.len() || config[..mine.len().min(24)] != mine[..mine.len().min(24)] {
            return Err(Errno::EINVAL);
        }
        *self.loaded_config.lock().unwrap() = Some(config.to_vec());
        Ok(())
    }

    fn digest(&self) -> Result<u64, Errno> {
        Ok(self.memory_digest())
    }

    fn release(&self) {
        RELEASES.fetch_add(1, Ordering::SeqCst);
    }
}

/// Prefix of the panics the tests cause on purpose.
pub const EXPECTED_PANIC: &str = "expected panic: ";

/// Keeps the panics the tests cause on purpose (messages starting with [`EXPECTED_PANIC`]) out
/// of the output; every other panic is reported as usual.
pub fn quiet_expected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let text = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("");
            if !text.starts_with(EXPECTED_PANIC) {
                default(info);
            }
        }));
    });
}

/// A fresh directory under the temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!("ds-rust-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits until `f` holds, at most `limit`.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f()
}

/// The repository root (Sources/rust/devicestream -> ../../..).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../..").canonicalize().unwrap()
}

/// The VMM's stream device (a VFIO `data_fd` stand-in): a source produces `data` as an ordered
/// stream, the first `precopy_part` bytes in PRE_COPY and the rest in STOP_COPY; a destination
/// appends what it is written.
pub struct StreamVmmDevice {
    source: bool,
    data: Vec<u8>,
    precopy_part: usize,
    inner: Mutex<StreamState>,
    pub transitions: Mutex<Vec<(DeviceState, DeviceState)>>,
}

struct StreamState {
    state: DeviceState,
    pos: usize,
    received: Vec<u8>,
    config: Option<Vec<u8>>,
}

impl StreamVmmDevice {
    pub fn source(len: usize, precopy_part: usize) -> Arc<StreamVmmDevice> {
        let data = (0..len).map(|i| (mix(i as u64 / 64) >> (i % 8 * 8)) as u8).collect();
        Arc::new(StreamVmmDevice {
            source: true,
            data,
            precopy_part,
            inner: Mutex::new(StreamState { state: DeviceState::Running, pos: 0, received: Vec::new(), config: None }),
            transitions: Mutex::new(Vec::new()),
        })
    }
    pub fn destination() -> Arc<StreamVmmDevice> {
        Arc::new(StreamVmmDevice {
            source: false,
            data: Vec::new(),
            precopy_part: 0,
            inner: Mutex::new(StreamState { state: DeviceState::Resuming, pos: 0, received: Vec::new(), config: None }),
            transitions: Mutex::new(Vec::new()),
        })
    }
    pub fn state(&self) -> DeviceState {
        self.inner.lock().unwrap().state
    }
    pub fn content_digest(&self) -> u64 {
        if self.source {
            xxh3(&self.data)
        } else {
            xxh3(&self.inner.lock().unwrap().received)
        }
    }
}

impl MigratableDevice for StreamVmmDevice {
    fn info(&self) -> DeviceInfo {
        let initial = if self.source { DeviceState::Running } else { DeviceState::Resuming };
        DeviceInfo::stream("vmm-stream0", initial).with_digest().with_stop_copy_size()
    }
    fn set_state(&self, from: DeviceState, to: DeviceState) -> Result<(), Errno> {
        let mut s = self.inner.lock().unwrap();
        if s.state != from {
            return Err(Errno::EINVAL);
        }
        if to.is_saving() && !from.is_saving() {
            s.pos = 0;
        }
        s.state = to;
        self.transitions.lock().unwrap().push((from, to));
        Ok(())
    }
    fn precopy_info(&self) -> Result<PrecopyInfo, Errno> {
        let s = self.inner.lock().unwrap();
        if !matches!(s.state, DeviceState::PreCopy | DeviceState::PreCopyP2p) {
            return Err(Errno::EINVAL);
        }
        Ok(PrecopyInfo { initial_bytes: self.precopy_part.saturating_sub(s.pos) as u64, dirty_bytes: 0 })
    }
    fn stop_copy_size(&self) -> Result<u64, Errno> {
        let s = self.inner.lock().unwrap();
        Ok((self.data.len() - s.pos.min(self.data.len())) as u64)
    }
    fn read(&self, buf: &mut [u8]) -> Result<usize, Errno> {
        let mut s = self.inner.lock().unwrap();
        let end = match s.state {
            DeviceState::PreCopy | DeviceState::PreCopyP2p => self.precopy_part,
            DeviceState::StopCopy => self.data.len(),
            _ => return Err(Errno::EINVAL),
        };
        let n = buf.len().min(end.saturating_sub(s.pos));
        buf[..n].copy_from_slice(&self.data[s.pos..s.pos + n]);
        s.pos += n;
        Ok(n)
    }
    fn write(&self, data: &[u8]) -> Result<(), Errno> {
        let mut s = self.inner.lock().unwrap();
        if s.state != DeviceState::Resuming {
            return Err(Errno::EINVAL);
        }
        s.received.extend_from_slice(data);
        Ok(())
    }
    fn save_config(&self) -> Result<Vec<u8>, Errno> {
        Ok(self.inner.lock().unwrap().config.clone().unwrap_or_else(|| b"STREAMCF".to_vec()))
    }
    fn load_config(&self, config: &[u8]) -> Result<(), Errno> {
        if config != b"STREAMCF" {
            return Err(Errno::EINVAL);
        }
        self.inner.lock().unwrap().config = Some(config.to_vec());
        Ok(())
    }
    fn digest(&self) -> Result<u64, Errno> {
        Ok(self.content_digest())
    }
}
