//! The source end of a migration, as a Rust VMM embeds it. Loopback by default.
//!
//!     cargo run --example source -- 127.0.0.1:PORT /tmp/ds.key [SIZE_MIB]
//!
//! KEYFILE is the one the destination example made. The device is the VMM's own (guest memory
//! written by a guest thread while it runs), migrated live: pre-copy rounds, then a switchover
//! that fits 300 ms of downtime.
use devicestream::{Device, Event, Key, Options, Policy, Source};
use std::time::Duration;

#[path = "vmm_device/mod.rs"]
mod vmm_device;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: source HOST:PORT KEYFILE [SIZE_MIB]");
        std::process::exit(2);
    }
    let size_mib: usize = args.get(3).map_or(64, |s| s.parse().expect("SIZE_MIB is a number"));
    if let Err(e) = run(&args[1], &args[2], size_mib << 20) {
        println!("failed: {e}");
        std::process::exit(1);
    }
}

fn run(addr: &str, key_file: &str, size: usize) -> Result<(), Box<dyn std::error::Error>> {
    let options =
        Options::new().connections(2).psk(Key::from_file(key_file)?).downtime_limit(Duration::from_millis(300)).policy(Policy::Abort); // or Policy::Wait (until the deadline), Policy::Switchover
    let memory = vmm_device::GuestMemoryDevice::source(size, 16)?;
    let mut source = Source::new(&[Device::from_arc(memory.clone())?], &options)?;
    source.connect(
        addr,
        Some(Box::new(|event: &Event| match event {
            Event::Iteration { iteration, bytes, .. } => println!("round {iteration}: {bytes} bytes"),
            Event::Switchover { predicted_downtime, reason } => println!("switchover ({reason:?}), predicted {predicted_downtime:?}"),
            _ => {}
        })),
    )?;
    // Blocks until the migration ends. Meanwhile another thread may cancel (source.cancel_handle()),
    // read source.stats(), or, with Options::external_switchover, call source.switchover().
    let report = source.wait()?;
    memory.shut_down();
    println!(
        "completed: downtime {:?}, device {:?}, digests verified: {}",
        report.downtime.unwrap_or_default(),
        memory.state(),
        report.digests_verified
    );
    Ok(())
}
