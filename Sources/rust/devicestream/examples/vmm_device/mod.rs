//! The device both examples migrate: what a Rust VMM writes to hand its own device to
//! DeviceStream. Its state is `size` bytes of memory (an memfd the VMM maps, as guest or device
//! memory would be) tracked in 4 KiB chunks by a dirty bitmap. The source runs a "guest" thread
//! that writes to it while it runs. No crates: the few libc and libxxhash calls are declared here.

#![allow(dead_code)] // each example uses its own half

use devicestream::{Access, DeviceInfo, DeviceState, Errno, MigratableDevice};
use std::ffi::{c_char, c_int, c_uint, c_void};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

extern "C" {
    fn memfd_create(name: *const c_char, flags: c_uint) -> c_int;
    fn ftruncate(fd: c_int, length: i64) -> c_int;
    fn mmap(addr: *mut c_void, length: usize, prot: c_int, flags: c_int, fd: c_int, offset: i64) -> *mut c_void;
    fn munmap(addr: *mut c_void, length: usize) -> c_int;
}
#[link(name = "xxhash")]
extern "C" {
    fn XXH3_64bits(data: *const c_void, len: usize) -> u64;
}

pub const CHUNK: usize = 4096;

struct Tracking {
    state: DeviceState,
    /// Entering a saving state starts a new stream: the next bitmap read reports every chunk.
    everything_dirty: bool,
}

pub struct GuestMemoryDevice {
    fd: OwnedFd,
    base: *mut u8,
    size: usize,
    source: bool,
    tracking: Mutex<Tracking>,
    /// Held by the guest while it writes; set_state takes it to stop the guest.
    guest_runs: Mutex<bool>,
    dirty: Vec<AtomicU64>,
    quit: AtomicBool,
}

// SAFETY: the mapping lives as long as the device; the guest thread writes it only while
// `guest_runs` (under its lock) says the device runs, and the library reads it through the fd.
unsafe impl Send for GuestMemoryDevice {}
unsafe impl Sync for GuestMemoryDevice {}

impl GuestMemoryDevice {
    fn new(size: usize, source: bool) -> std::io::Result<Arc<GuestMemoryDevice>> {
        let err = std::io::Error::last_os_error;
        let fd = unsafe {
            memfd_create(c"guest-memory".as_ptr(), 1 /* MFD_CLOEXEC */)
        };
        if fd < 0 {
            return Err(err());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if unsafe { ftruncate(fd.as_raw_fd(), size as i64) } != 0 {
            return Err(err());
        }
        let base = unsafe {
            mmap(std::ptr::null_mut(), size, 3 /* READ|WRITE */, 1 /* SHARED */, fd.as_raw_fd(), 0)
        };
        if base as isize == -1 {
            return Err(err());
        }
        let initial = if source { DeviceState::Running } else { DeviceState::Resuming };
        Ok(Arc::new(GuestMemoryDevice {
            fd,
            base: base as *mut u8,
            size,
            source,
            tracking: Mutex::new(Tracking { state: initial, everything_dirty: false }),
            guest_runs: Mutex::new(source),
            dirty: (0..size.div_ceil(CHUNK).div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            quit: AtomicBool::new(false),
        }))
    }

    /// A running source with some content, and a guest thread writing `chunks_per_ms` chunks a
    /// millisecond (mostly in a hot sixteenth of the memory) while the device runs.
    pub fn source(size: usize, chunks_per_ms: u64) -> std::io::Result<Arc<GuestMemoryDevice>> {
        let d = Self::new(size, true)?;
        for i in 0..size / 8 {
            d.write(i * 8, if i % 1024 < 512 { i as u64 } else { mix(i as u64) });
        }
        let guest = d.clone();
        std::thread::Builder::new().name("guest".into()).spawn(move || guest.run_guest(chunks_per_ms))?;
        Ok(d)
    }

    /// A destination of `size` zero bytes, in RESUMING.
    pub fn destination(size: usize) -> std::io::Result<Arc<GuestMemoryDevice>> {
        Self::new(size, false)
    }

    fn write(&self, offset: usize, v: u64) {
        unsafe { std::ptr::write_unaligned(self.base.add(offset) as *mut u64, v) };
    }

    fn run_guest(&self, chunks_per_ms: u64) {
        let chunks = self.size / CHUNK;
        let mut r = 1u64;
        while !self.quit.load(Ordering::Relaxed) {
            {
                let runs = self.guest_runs.lock().unwrap();
                if *runs {
                    for _ in 0..chunks_per_ms {
                        r = mix(r);
                        let c = if r % 8 != 0 { (r >> 8) as usize % (chunks / 16).max(1) } else { (r >> 8) as usize % chunks };
                        self.write(c * CHUNK + (r >> 40) as usize % (CHUNK / 8) * 8, r);
                        self.dirty[c / 64].fetch_or(1 << (c % 64), Ordering::Release);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Stops the guest thread for good.
    pub fn shut_down(&self) {
        self.quit.store(true, Ordering::Relaxed);
    }

    pub fn state(&self) -> DeviceState {
        self.tracking.lock().unwrap().state
    }

    /// XXH3-64 of the memory (the digest the library's own sim devices use too).
    pub fn memory_digest(&self) -> u64 {
        let _guest_stopped = self.guest_runs.lock().unwrap();
        unsafe { XXH3_64bits(self.base as *const c_void, self.size) }
    }
}

impl Drop for GuestMemoryDevice {
    fn drop(&mut self) {
        unsafe { munmap(self.base as *mut c_void, self.size) };
    }
}

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl MigratableDevice for GuestMemoryDevice {
    fn info(&self) -> DeviceInfo {
        let initial = if self.source { DeviceState::Running } else { DeviceState::Resuming };
        DeviceInfo::addressable("guest-memory", self.size as u64, CHUNK as u64, initial).with_digest()
    }

    fn set_state(&self, from: DeviceState, to: DeviceState) -> Result<(), Errno> {
        let mut t = self.tracking.lock().unwrap();
        if t.state != from {
            return Err(Errno::EINVAL);
        }
        // The guest writes only while the device runs (this waits for a write in progress).
        *self.guest_runs.lock().unwrap() = to.is_running() && self.source;
        if to.is_saving() && !from.is_saving() {
            t.everything_dirty = true;
        }
        t.state = to;
        Ok(())
    }

    fn data_fd(&self, _access: Access) -> Result<BorrowedFd<'_>, Errno> {
        Ok(self.fd.as_fd())
    }

    fn dirty_bitmap(&self, bitmap: &mut [u64], clear: bool) -> Result<(), Errno> {
        let mut t = self.tracking.lock().unwrap();
        let chunks = self.size.div_ceil(CHUNK);
        for (w, out) in bitmap.iter_mut().enumerate() {
            let word = &self.dirty[w];
            let bits = if clear { word.swap(0, Ordering::AcqRel) } else { word.load(Ordering::Acquire) };
            let all = match chunks.saturating_sub(w * 64) {
                n if n >= 64 => u64::MAX,
                n => (1u64 << n) - 1,
            };
            *out |= if t.everything_dirty { all } else { bits };
        }
        if clear {
            t.everything_dirty = false;
        }
        Ok(())
    }

    fn save_config(&self) -> Result<Vec<u8>, Errno> {
        let mut c = b"GUESTMEM".to_vec();
        c.extend_from_slice(&(self.size as u64).to_le_bytes());
        Ok(c)
    }

    fn load_config(&self, config: &[u8]) -> Result<(), Errno> {
        if config == self.save_config()?.as_slice() {
            Ok(())
        } else {
            Err(Errno::EINVAL) // another kind of device, or another size
        }
    }

    fn digest(&self) -> Result<u64, Errno> {
        Ok(self.memory_digest())
    }
}
