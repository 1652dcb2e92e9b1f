import Glibc
import Synchronization
import DSWire
import DSRing
import DSTransport
import DSDevices
import DSSupport

/// The destination end of a live migration (`devstream receive --device`).
///
/// It accepts one migration session, matches the source's device headers to its own devices
/// (each in RESUMING), loads chunks as they arrive on N channels — at their offsets, or in
/// sequence for stream devices — tells the source when each device's initial data is loaded
/// (switchover-ack), and after every device's end of state has been verified against what
/// was loaded, takes the devices RESUMING → STOP and says `loaded`, and only on the source's
/// `commit` takes them to RUNNING. A failure before `commit` leaves the devices not running;
/// after it they run, and the error says so.
public final class MigrationDestination: @unchecked Sendable {
    // @unchecked: `devices` is written only by `run`'s setup phase (worker 0, while the caller
    // waits) and read after it.
    /// Makes destination device `index` (in RESUMING) at load setup; `sourceSize` is the source
    /// device's state size for an addressable device (nil for a stream device). It comes from
    /// the peer: check it before allocating anything for it.
    public typealias DeviceFactory = @Sendable (_ index: Int, _ sourceSize: UInt64?) throws(DeviceError) -> any MigratableDevice

    /// The destination devices (made at load setup when the destination was given a factory).
    public private(set) var devices: [any MigratableDevice]
    private let factory: (count: Int, make: DeviceFactory)?
    public let listener: SessionListener
    public let options: TransferOptions
    /// Called as the handover passes each step (logging; tests stop the process there). Set it
    /// before `run`.
    public var phaseHook: (@Sendable (HandoverPhase) -> Void)?
    private let warn: @Sendable (String) -> Void

    /// Binds `endpoint` (port 0 picks one: `listener.endpoint`) and starts accepting.
    public init(listen endpoint: Endpoint, devices: [any MigratableDevice], options: TransferOptions,
                warn: @escaping @Sendable (String) -> Void = { printWarning($0) }) throws(TransferError) {
        try options.validate()
        self.devices = devices
        self.factory = nil
        self.options = options
        self.warn = warn
        listener = try SessionListener(endpoint: endpoint, options: options, warn: warn)
        try listener.start()
    }

    /// Like `init(listen:devices:options:)`, but the `deviceCount` devices are made by
    /// `makeDevice` at load setup, once the source's headers give their sizes (a file
    /// destination needs one).
    public init(listen endpoint: Endpoint, deviceCount: Int, makeDevice: @escaping DeviceFactory, options: TransferOptions,
                warn: @escaping @Sendable (String) -> Void = { printWarning($0) }) throws(TransferError) {
        try options.validate()
        self.devices = []
        self.factory = (deviceCount, makeDevice)
        self.options = options
        self.warn = warn
        listener = try SessionListener(endpoint: endpoint, options: options, warn: warn)
        try listener.start()
    }

    /// Closes the devices this destination made with its factory.
    public func closeDevices() { if factory != nil { for d in devices { d.close() } } }

    /// Receives one migration.
    public func run(acceptTimeout: Duration? = nil) -> MigrationReport {
        var report = MigrationReport()
        let start = Monotonic.now
        let abort = AbortSignal(side: "destination")
        var sockets: [Connection] = []
        var run: DestinationRun?
        do throws(TransferError) {
            let (session, s) = try listener.waitForSession(timeout: acceptTimeout)
            sockets = s
            guard session.mode == .migration else {
                for c in s { abort.watch(c) }
                throw TransferError(.protocolViolation, "the sender started a plain transfer, but this receiver expects a migration (--device)")
            }
            report.connections = session.channelCount
            report.compression = session.features.contains(.lz4)
            let r = try DestinationRun(session: session, sockets: s, options: options, abort: abort, warn: warn,
                                       phaseHook: phaseHook, report: report)
            run = r
            try r.setup { (headers) throws(TransferError) in try self.makeLoaders(headers, channels: session.channelCount) }
            try r.load()
            try r.handover()
            try r.summary()
            report = r.report
            report.completed = true
        } catch {
            if let r = run { report = r.report }
            abort.abort(error)
            for l in run?.loaders ?? [] { l.wake() }
            let states = devices.map { $0.state == .running ? "\($0.spec) is RUNNING" : "\($0.spec) is not running (state \($0.state))" }
            report.error = TransferError(error.code, "\(error.message); on the destination \(states.joined(separator: ", "))")
        }
        run?.shutdown()
        listener.stop()
        for c in sockets { c.close() }
        report.totalTime = Monotonic.now - start
        return report
    }

    /// load_setup: the source's device headers matched to the local devices (made by the factory
    /// now, when the destination was given one), each with its loader.
    private func makeLoaders(_ headers: [DeviceHeader], channels n: Int) throws(TransferError) -> [DeviceLoader] {
        let have = factory?.count ?? devices.count
        guard headers.count == have else {
            throw TransferError(.usage, "the source migrates \(headers.count) device(s) but this destination has \(have) (--device)")
        }
        var list: [DeviceLoader] = []
        for (id, header) in headers.enumerated() {
            do throws(DeviceError) {
                let device: any MigratableDevice
                if let factory {
                    device = try factory.make(id, header.kind == .addressable ? header.size : nil)
                    devices.append(device)
                } else {
                    device = devices[id]
                }
                list.append(try DeviceLoader(id: id, device: device, header: header, channels: n))
            } catch {
                throw TransferError(.device, error.message)
            }
        }
        return list
    }
}
