// The destination end of a migration, as a VMM embeds it (the README's example; the tests build
// and run it). Usage: example-destination HOST:PORT KEYFILE OUTPUT
// It makes a fresh key in KEYFILE (mode 0600) for the source, listens, and writes the migrated
// state into OUTPUT (a file device made once the source says how big it is).
import DeviceStream
import Glibc  // exit, fflush

let args = CommandLine.arguments
guard args.count == 4 else { print("usage: example-destination HOST:PORT KEYFILE OUTPUT"); exit(2) }
do {
    var options = TransferOptions()
    options.security = try SecurityOptions.makeKeyFile(args[2])   // TLS 1.3 with a one-time key
    let output = args[3]
    let destination = try MigrationDestination(
        listen: try Endpoint.parse(args[1]), deviceCount: 1,
        makeDevice: { _, size throws(DeviceError) in
            guard let size else { throw DeviceError(.unsupported, "the source's device is not addressable") }
            return try FileDevice(destinationPath: output, size: size)
        },
        options: options)
    print("listening on \(destination.endpoint)")
    fflush(nil)  // the line is read through a pipe
    // Blocks until the migration ends; another thread may call destination.cancel().
    let report = destination.run { event in
        if case .handover(let phase) = event { print("handover: \(phase.rawValue)") }
    }
    destination.closeDevices()
    if let error = report.error { print("failed: \(error)"); exit(1) }
    print("completed: \(report.devices[0].bytes) bytes, downtime \(report.downtime ?? .zero)")
} catch {
    print("error: \(error)")
    exit(1)
}
