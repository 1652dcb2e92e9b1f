import Testing
import Foundation

/// The embedding API as an outside client sees it: `swiftc -typecheck` against the built
/// modules, with no package name (so `package` declarations are invisible, as to a VMM).
/// A client that uses every public name must compile; each internal name must be unknown.
@Suite struct APICanaryTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static var modules: String { URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path + "/Modules" }

    /// Type-checks `source` as a client module; returns (exit status, diagnostics).
    static func typecheck(_ source: String) throws -> (Int32, String) {
        let dir = "/tmp/ds-canary-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try source.write(toFile: "\(dir)/client.swift", atomically: true, encoding: .utf8)
        let p = Process(), out = Pipe()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        // Debug builds are made for @testable imports, which keeps the C shims' module maps
        // among the modules' dependencies: hand them over as SwiftPM does.
        let maps = ["CXXHash", "CLZ4", "CURing", "COpenSSL"].flatMap {
            ["-Xcc", "-fmodule-map-file=\(root.path)/Sources/\($0)/module.modulemap"]
        }
        p.arguments = ["swiftc", "-typecheck", "-swift-version", "6", "-I", modules] + maps + ["\(dir)/client.swift"]
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return (p.terminationStatus, text)
    }

    @Test func aClientOfThePublicNamesCompiles() throws {
        let (status, text) = try Self.typecheck(Self.client)
        #expect(status == 0, "\(text)")
    }

    /// Names from the layers underneath (and the fixtures) that an embedder must not see.
    static let internalNames = [
        "Ring", "Channel", "WorkerGroup", "ChannelSet", "SessionListener", "Connection", "AbortSignal",
        "printWarning", "ConditionLock", "Monotonic", "OSThread", "Action", "Instant", "RoundPlan", "PrecopyScheduler",
        "FrameHeader", "FrameType", "ChunkEncoder", "WireLimits", "DeviceSaver", "DeviceLoader", "Handover",
        "DeviceCore", "VFIOUAPI", "SimulatedDevice", "DeviceSpec", "ContentGenerator", "VFIOv1SimulatedDevice",
        "TransferSender", "JSONText",
    ]

    @Test func internalNamesAreNotVisible() throws {
        let uses = Self.internalNames.enumerated().map { "let n\($0.offset) = \($0.element).self" }.joined(separator: "\n")
        let (status, text) = try Self.typecheck("import DeviceStream\n\(uses)\nlet d = Duration.zero.milliseconds\n")
        #expect(status != 0)
        for name in Self.internalNames {
            #expect(text.contains("cannot find '\(name)' in scope"), "\(name) is visible to an embedder")
        }
        // (Duration has a static `milliseconds(_:)`; only DSSupport's instance property would compile.)
        #expect(text.contains("'milliseconds'"), "DSSupport's Duration helpers leak into the embedder's namespace")
    }

    /// Uses every public name of the embedding API once.
    static let client = """
    import DeviceStream

    func everyPublicName() throws {
        var config = MigrationConfiguration()
        config.transfer = TransferOptions()
        config.transfer.connections = 2
        config.transfer.backend = IOBackendKind.blocking
        config.transfer.security = try SecurityOptions.makeKeyFile("/tmp/never-used-key")
        config.scheduler = SchedulerConfiguration()
        config.scheduler.downtimeLimit = .milliseconds(300)
        config.scheduler.policy = NonConvergencePolicy.abort
        config.scheduler.switchover = SwitchoverControl.external
        let devices: [any MigratableDevice] = [try FileDevice(sourcePath: "/nonexistent")]
        let source = MigrationSource(devices: devices, configuration: config, warn: { _ in })
        let report: MigrationReport = source.migrate(to: try Endpoint.parse("127.0.0.1:1")) { (event: MigrationEvent) in
            switch event {
            case .iteration(let r): let _: IterationReport = r
            case .handover(let phase): let _: HandoverPhase = phase
            case .readyToSwitchover(_, let reason): let _: SwitchoverReason = reason
            default: break
            }
        }
        let _: MigrationError? = report.error
        let _: MigrationError.Code? = report.error?.code
        let _: DeviceError? = report.error?.deviceError
        let _: DeviceError.Code? = report.error?.deviceError?.code
        let _: [DeviceReport] = report.devices
        let _: SwitchoverReason? = report.switchoverReason
        let _: SessionProtection = report.protection
        let _: SessionProtection = config.transfer.protection
        try SecurityOptions.randomKey().writeKeyFile("/tmp/never-used-key")
        let statistics: MigrationStatistics = source.statistics
        let _: MigrationPhase = statistics.phase
        source.cancel()
        source.switchover()
        source.externalPendingBytes = 1 << 30
        _ = try source.migrate(over: [3, 4])
        let destination = try MigrationDestination(
            listen: Endpoint(host: "127.0.0.1", port: 0), deviceCount: 1,
            makeDevice: { _, size throws(DeviceError) in try FileDevice(destinationPath: "/nonexistent", size: size ?? 0) },
            options: config.transfer)
        destination.resumeHold = .seconds(5)
        destination.resume()
        _ = destination.endpoint
        _ = destination.cancel()
        _ = destination.run(acceptTimeout: .seconds(1)) { _ in }
        _ = try MigrationDestination(adopting: [5], devices: devices, options: config.transfer)
        let vfio: any StreamDevice = try VFIODevice(path: "/dev/vfio/devices/vfio0")
        let _: VFIODeviceState = vfio.state
        let _: VFIOMigrationFlags = vfio.migrationFlags
        let _: DeviceDataKind = vfio.dataKind
        let _: PrecopyInfo = try vfio.precopyInfo()
        let _: SwitchoverCostEstimate? = vfio.switchoverCostEstimate
        let borrowed = try VFIODevice(fd: 3, ownership: FDOwnership.borrowed, name: "gpu0")
        borrowed.close()
        let file: any AddressableDevice = try FileDevice(sourcePath: "/nonexistent")
        _ = try file.dataFD(for: DeviceAccess.save)
    }
    """
}
