// The source end of a migration, as a VMM embeds it (the README's example; the tests build and
// run it). Usage: example-source HOST:PORT KEYFILE STATEFILE
// KEYFILE is the one example-destination made. The device here is a file; a VMM hands in its
// own (`VFIODevice(fd:ownership:)`, or a type conforming to `AddressableDevice`/`StreamDevice`).
import DeviceStream
import Glibc  // exit

let args = CommandLine.arguments
guard args.count == 4 else { print("usage: example-source HOST:PORT KEYFILE STATEFILE"); exit(2) }
do {
    var config = MigrationConfiguration()
    config.transfer.connections = 2
    config.transfer.security = try SecurityOptions.pskFile(args[2])
    config.scheduler.downtimeLimit = .milliseconds(300)
    config.scheduler.policy = .abort                 // or .wait (until the deadline), .switchover
    let device = try FileDevice(sourcePath: args[3])
    let source = MigrationSource(devices: [device], configuration: config)
    // Blocks until the migration ends; another thread may call source.cancel(), read
    // source.statistics, or (with config.scheduler.switchover = .external) source.switchover().
    let report = source.migrate(to: try Endpoint.parse(args[1])) { event in
        switch event {
        case .iteration(let r): print("round \(r.iteration): \(r.sentBytes) bytes")
        case .switchover(let predicted, let reason): print("switchover (\(reason)), predicted \(predicted ?? .zero)")
        default: break
        }
    }
    if let error = report.error { print("failed: \(error)"); exit(1) }
    print("completed: downtime \(report.downtime ?? .zero), digests equal: \(report.devices[0].sourceDigest == report.devices[0].destinationDigest)")
} catch {
    print("error: \(error)")
    exit(1)
}
