/// The payloads of the migration frames (types 0x04, 0x05, 0x07 and 0x10 … 0x1C), one typed
/// struct per message, named as WIRE.md names them. Each encodes to bytes and decodes bytes from
/// the network with every length and count checked first. Times travel as f64 milliseconds or
/// u64 microseconds exactly as they always have: these types changed names, not bytes.

/// What a device's state looks like on the wire: where a chunk goes.
public enum DeviceKind: UInt8, Sendable, CaseIterable {
    /// Device memory or an image: chunks carry a byte offset (`data` frames).
    case addressable = 0
    /// An opaque ordered stream (the VFIO v2 `data_fd`): chunks carry a sequence number
    /// (`streamData` frames) and are written in order.
    case orderedStream = 1

    /// The data frame type that carries this kind's chunks.
    public var frameType: FrameType { self == .addressable ? .data : .streamData }
}

/// `deviceSection` (0x10, source → destination): one device's header (QEMU: setup state).
/// `stream` = device id, `aux` = device count.
public struct DeviceHeader: Equatable, Sendable {
    public var kind: DeviceKind
    /// Bytes of an addressable device; 0 for a stream.
    public var size: UInt64
    /// The device's VFIO migration flags.
    public var flags: UInt64
    /// The source's device spec, for messages.
    public var spec: String

    public init(kind: DeviceKind, size: UInt64, flags: UInt64, spec: String) {
        self.kind = kind; self.size = size; self.flags = flags; self.spec = spec
    }

    public func encoded() -> [UInt8] {
        var w = PayloadWriter(); w.u8(kind.rawValue); w.u64(size); w.u64(flags); w.string(spec); return w.bytes
    }

    public static func decode(_ b: [UInt8]) throws(WireError) -> DeviceHeader {
        var r = PayloadReader(b)
        let raw = try r.u8()
        guard let kind = DeviceKind(rawValue: raw) else { throw .malformed("unknown device kind \(raw)") }
        let h = DeviceHeader(kind: kind, size: try r.u64(), flags: try r.u64(), spec: try r.string())
        guard h.size <= UInt64(Int64.max) else {
            throw .lengthOutOfBounds(field: "device size", value: h.size, limit: UInt64(Int64.max))
        }
        return h
    }
}

/// `initDataSent` (0x15) and `endOfState` (0x14), source → destination: a device's chunks per
/// channel and bytes, so the destination can prove it loaded exactly what was sent (a channel
/// keeps order, so a count per channel is exact).
public struct DeviceTotals: Equatable, Sendable {
    public var chunksPerChannel: [UInt64]
    public var bytes: UInt64
    public var digest: UInt64?

    public init(chunksPerChannel: [UInt64], bytes: UInt64, digest: UInt64? = nil) {
        self.chunksPerChannel = chunksPerChannel; self.bytes = bytes; self.digest = digest
    }

    public func encoded() -> [UInt8] {
        var w = PayloadWriter()
        w.u64(bytes)
        w.optionalU64(digest)
        w.u16(UInt16(chunksPerChannel.count))
        for c in chunksPerChannel { w.u64(c) }
        return w.bytes
    }

    public static func decode(_ b: [UInt8], channels: Int) throws(WireError) -> DeviceTotals {
        var r = PayloadReader(b)
        let bytes = try r.u64()
        let digest = try r.optionalU64()
        let n = Int(try r.u16())
        guard n == channels else { throw .malformed("device totals for \(n) channels in a \(channels)-channel session") }
        var counts: [UInt64] = []
        for _ in 0..<n { counts.append(try r.u64()) }
        return DeviceTotals(chunksPerChannel: counts, bytes: bytes, digest: digest)
    }
}

/// `accept` (0x07) at migration setup, destination → source: its own setup time and its
/// devices' resume estimate, so the source counts neither as network latency. Empty from older
/// peers (`decodeIfPresent` gives nil).
public struct SetupAccept: Equatable, Sendable {
    public var setupMilliseconds: Double
    public var resumeEstimateMilliseconds: Double

    public init(setupMilliseconds: Double, resumeEstimateMilliseconds: Double) {
        self.setupMilliseconds = setupMilliseconds; self.resumeEstimateMilliseconds = resumeEstimateMilliseconds
    }

    public func encoded() -> [UInt8] { f64Pair(setupMilliseconds, resumeEstimateMilliseconds) }

    public static func decodeIfPresent(_ b: [UInt8]) throws(WireError) -> SetupAccept? {
        if b.isEmpty { return nil }
        let (a, c) = try decodeF64Pair(b)
        return SetupAccept(setupMilliseconds: a, resumeEstimateMilliseconds: c)
    }
}

/// `loadStats` (0x17), destination → source, after every round's marks (`aux` = the round):
/// bytes loaded so far and that round's load rate (0 = no sample).
public struct LoadStats: Equatable, Sendable {
    public var loadedBytes: Double
    public var bytesPerSecond: Double

    public init(loadedBytes: Double, bytesPerSecond: Double) {
        self.loadedBytes = loadedBytes; self.bytesPerSecond = bytesPerSecond
    }

    public func encoded() -> [UInt8] { f64Pair(loadedBytes, bytesPerSecond) }

    public static func decode(_ b: [UInt8]) throws(WireError) -> LoadStats {
        let (a, c) = try decodeF64Pair(b)
        return LoadStats(loadedBytes: a, bytesPerSecond: c)
    }

    /// The rate, when it is a usable sample (finite and positive: a peer may send anything).
    public var rateSample: Double? { bytesPerSecond.isFinite && bytesPerSecond > 0 ? bytesPerSecond : nil }
}

/// `loaded` (0x1B), destination → source: every device is loaded and validated (RESUMING →
/// STOP) and waits for `commit`.
public struct Loaded: Equatable, Sendable {
    public var loadMilliseconds: Double
    public var validateMilliseconds: Double

    public init(loadMilliseconds: Double, validateMilliseconds: Double) {
        self.loadMilliseconds = loadMilliseconds; self.validateMilliseconds = validateMilliseconds
    }

    public func encoded() -> [UInt8] { f64Pair(loadMilliseconds, validateMilliseconds) }

    public static func decode(_ b: [UInt8]) throws(WireError) -> Loaded {
        let (a, c) = try decodeF64Pair(b)
        return Loaded(loadMilliseconds: a, validateMilliseconds: c)
    }
}

/// `resumed` (0x18), destination → source: every device is RUNNING (only after `commit`).
public struct Resumed: Equatable, Sendable {
    /// From `commit` to every device RUNNING.
    public var commitToRunningMilliseconds: Double
    /// Validation plus commit-to-running: the destination's whole resume cost.
    public var resumeMilliseconds: Double

    public init(commitToRunningMilliseconds: Double, resumeMilliseconds: Double) {
        self.commitToRunningMilliseconds = commitToRunningMilliseconds; self.resumeMilliseconds = resumeMilliseconds
    }

    public func encoded() -> [UInt8] { f64Pair(commitToRunningMilliseconds, resumeMilliseconds) }

    public static func decode(_ b: [UInt8]) throws(WireError) -> Resumed {
        let (a, c) = try decodeF64Pair(b)
        return Resumed(commitToRunningMilliseconds: a, resumeMilliseconds: c)
    }
}

/// `ack` (0x05) in a migration, destination → source: each device's state digest (nil: the
/// device cannot digest its state).
public struct DeviceDigests: Equatable, Sendable {
    public var digests: [UInt64?]

    public init(_ digests: [UInt64?]) { self.digests = digests }

    public func encoded() -> [UInt8] {
        var w = PayloadWriter()
        w.digestList(digests)
        return w.bytes
    }

    public static func decode(_ b: [UInt8]) throws(WireError) -> DeviceDigests {
        var r = PayloadReader(b)
        return DeviceDigests(try r.digestList())
    }
}

/// `endOfStream` (0x04) in a migration, source → destination, after the destination's digests:
/// the source's summary, so both ends report the same downtime and totals.
public struct MigrationSummary: Equatable, Sendable {
    public var downtime: Duration
    public var expectedDowntime: Duration?
    public var downtimeLimit: Duration
    public var iterations: Int
    public var precopyBytes: UInt64
    public var stopcopyBytes: UInt64
    public var sourceDigests: [UInt64?]

    public init(downtime: Duration, expectedDowntime: Duration?, downtimeLimit: Duration, iterations: Int,
                precopyBytes: UInt64, stopcopyBytes: UInt64, sourceDigests: [UInt64?]) {
        self.downtime = downtime; self.expectedDowntime = expectedDowntime; self.downtimeLimit = downtimeLimit
        self.iterations = iterations; self.precopyBytes = precopyBytes; self.stopcopyBytes = stopcopyBytes
        self.sourceDigests = sourceDigests
    }

    public func encoded() -> [UInt8] {
        var w = PayloadWriter()
        w.u64(Self.micros(downtime)); w.u64(expectedDowntime.map(Self.micros) ?? UInt64.max)
        w.u64(Self.micros(downtimeLimit)); w.u32(UInt32(clamping: iterations)); w.u64(precopyBytes); w.u64(stopcopyBytes)
        w.digestList(sourceDigests)
        return w.bytes
    }

    public static func decode(_ b: [UInt8]) throws(WireError) -> MigrationSummary {
        var r = PayloadReader(b)
        let down = try duration(try r.u64())
        let expected = try r.u64()
        let limit = try duration(try r.u64())
        let iterations = Int(try r.u32())
        let pre = try r.u64(), stop = try r.u64()
        let digests = try r.digestList()
        return MigrationSummary(downtime: down, expectedDowntime: expected == UInt64.max ? nil : try duration(expected),
                                downtimeLimit: limit, iterations: iterations, precopyBytes: pre, stopcopyBytes: stop,
                                sourceDigests: digests)
    }

    /// Whole microseconds, clamped at zero (a duration on the wire is never negative).
    private static func micros(_ d: Duration) -> UInt64 {
        let (s, atto) = d.components
        guard s >= 0 else { return 0 }
        return UInt64(s).multipliedReportingOverflow(by: 1_000_000).partialValue &+ UInt64(atto / 1_000_000_000_000)
    }

    private static func duration(_ micros: UInt64) throws(WireError) -> Duration {
        guard let m = Int64(exactly: micros) else { throw .malformed("duration \(micros) µs out of range") }
        return .microseconds(m)
    }
}

// MARK: - Shared encodings

private func f64Pair(_ a: Double, _ b: Double) -> [UInt8] {
    var w = PayloadWriter(); w.f64(a); w.f64(b); return w.bytes
}

private func decodeF64Pair(_ bytes: [UInt8]) throws(WireError) -> (Double, Double) {
    var r = PayloadReader(bytes)
    return (try r.f64(), try r.f64())
}

extension PayloadWriter {
    /// A presence byte (0/1) and a u64 (0 when absent).
    mutating func optionalU64(_ v: UInt64?) { u8(v == nil ? 0 : 1); u64(v ?? 0) }

    /// A u16 count, then an optional u64 per device.
    mutating func digestList(_ digests: [UInt64?]) {
        u16(UInt16(clamping: digests.count))
        for d in digests { optionalU64(d) }
    }
}

extension PayloadReader {
    mutating func optionalU64() throws(WireError) -> UInt64? {
        let present = try u8()
        let v = try u64()
        return present == 1 ? v : nil
    }

    /// A digest list of at most `WireLimits.maxDevices` entries.
    mutating func digestList() throws(WireError) -> [UInt64?] {
        let n = Int(try u16())
        guard n <= WireLimits.maxDevices else {
            throw .lengthOutOfBounds(field: "device count", value: UInt64(n), limit: UInt64(WireLimits.maxDevices))
        }
        var out: [UInt64?] = []
        out.reserveCapacity(n)
        for _ in 0..<n { out.append(try optionalU64()) }
        return out
    }
}
