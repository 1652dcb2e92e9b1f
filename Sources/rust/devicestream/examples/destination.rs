//! The destination end of a migration, as a Rust VMM embeds it. Loopback by default.
//!
//!     cargo run --example destination -- 127.0.0.1:0 /tmp/ds.key [SIZE_MIB]
//!
//! Makes a fresh key in KEYFILE (32 random bytes as hex, mode 0600) for the source, listens
//! (printing `listening on HOST:PORT` first), receives one migration into its own device and
//! exits 0 once the device runs here.
use devicestream::{Destination, Device, Event, Key, Options};
use std::io::Write;

#[path = "vmm_device/mod.rs"]
mod vmm_device;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: destination HOST:PORT KEYFILE [SIZE_MIB]");
        std::process::exit(2);
    }
    let size_mib: usize = args.get(3).map_or(64, |s| s.parse().expect("SIZE_MIB is a number"));
    if let Err(e) = run(&args[1], &args[2], size_mib << 20) {
        println!("failed: {e}");
        std::process::exit(1);
    }
}

fn run(addr: &str, key_file: &str, size: usize) -> Result<(), Box<dyn std::error::Error>> {
    let key = Key::generate_file(key_file)?; // TLS 1.3 with a one-time key
    let memory = vmm_device::GuestMemoryDevice::destination(size)?;
    let mut destination = Destination::new(&[Device::from_arc(memory.clone())?], &Options::new().psk(key))?;
    let port = destination.listen(
        addr,
        Some(Box::new(|event: &Event| {
            if let Event::Handover { phase } = event {
                println!("handover: {phase:?}");
            }
        })),
    )?;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    println!("listening on {host}:{port}");
    std::io::stdout().flush()?; // the line is read through a pipe
                                // Blocks until the migration ends; another thread may call destination.cancel() or use a
                                // destination.cancel_handle().
    let report = destination.wait()?;
    println!(
        "completed: {} MiB, device {:?}, digest {:016x}, digests verified: {}",
        size >> 20,
        memory.state(),
        memory.memory_digest(),
        report.digests_verified
    );
    Ok(())
}
