import DeviceStream
import DSSupport

// The README's embedding example, compiled with the tests so it cannot go stale. It is never
// called: it would listen on a real interface and connect to another host.
func readmeEmbeddingExample() throws {
    // Destination host: each device is made, in RESUMING, once the source's header gives its size.
    let destination = try MigrationDestination(
        listen: Endpoint(host: "0.0.0.0", port: 7000), deviceCount: 1,
        makeDevice: { _, size throws(DeviceError) in
            guard let size else { throw DeviceError(.unsupported, "the source's device is not addressable") }
            return try FileDevice(destinationPath: "/var/lib/vm/disk.img", size: size)
        },
        options: TransferOptions())
    let loaded = destination.run()                      // blocks until the migration ends
    _ = loaded

    // Source host.
    var config = MigrationConfiguration()
    config.scheduler.downtimeLimit = .milliseconds(300)
    config.scheduler.policy = .abort                    // or .wait (until config.scheduler.deadline), .switchover
    config.transfer.connections = 4
    let device = try FileDevice(sourcePath: "/var/lib/vm/disk.img")  // or VFIODevice(path: "/dev/vfio/devices/vfio0")
    let report = MigrationSource(devices: [device], configuration: config)
        .migrate(to: try Endpoint.parse("10.0.0.2:7000")) { event in
            if case .iteration(let r) = event { print(r.iteration, r.sentBytes, r.dirtyBytes) }
        }
    print(report.completed, report.downtime ?? .zero, report.expectedDowntime ?? .zero,
          report.devices.map { ($0.sourceDigest, $0.destinationDigest) })
}
