/// Device spec strings and the factory that opens them.
///
/// Kinds and keys:
/// - `sim:size=SIZE[,dirty-rate=SIZE/s][,hot=PCT][,profile=mixed|zero|random|text][,seed=N][,chunk=SIZE]`
///   (defaults: size=1G, dirty-rate=0, hot=10%, profile=mixed, seed=1, chunk=4K: the dirty-tracking granularity);
/// - `vfio-emu:size=SIZE[,dirty-rate=SIZE][,seed=N]` (size required; dirty-rate=0, seed=1);
/// - `file:PATH`; `vfio:PATH` (a real VFIO v2 device, opened by `VFIODevice`).
///
/// Sizes follow the one size grammar of the project (`SizeParsing`, as `--max-bandwidth` and
/// `--chunk-size` do): binary units, `4K`, `64M`, `1G`, `1.5G`, `10MiB`, or plain bytes (`1024`),
/// a whole number of bytes; a rate may end in `/s`. A `sim:` `dirty-rate` is bytes of 4 KiB pages
/// written per second while the device runs, each page write counted whole, rewrites included
/// (`DirtySchedule`). Percentages are `10%` or a fraction `0.1`.

import DSDevices
import DSSupport

public struct DeviceSpec: Sendable, Equatable, CustomStringConvertible {
    /// Options of a `sim:` device.
    public struct SimOptions: Sendable, Equatable {
        public var size: UInt64 = 1 << 30
        /// True when the spec gave `size=` (a destination's size must then match the source's).
        public var sizeGiven = false
        public var dirtyRate: UInt64 = 0
        public var hotFraction: Double = 0.1
        public var profile: ContentProfile = .mixed
        public var seed: UInt64 = 1
        public var chunkSize: Int = 4 << 10  // dirty tracking per 4 KiB page, as KVM and VFIO track
        public init() {}
    }

    /// Options of a `vfio-emu:` device.
    public struct EmulatedOptions: Sendable, Equatable {
        public var size: UInt64
        public var dirtyRate: UInt64 = 0
        public var seed: UInt64 = 1
        public init(size: UInt64) { self.size = size }
    }

    public enum Kind: Sendable, Equatable {
        case sim(SimOptions)
        case vfioEmu(EmulatedOptions)
        case file(path: String)
        case vfio(path: String)
    }

    /// The spec string as given.
    public let text: String
    public let kind: Kind
    public var description: String { text }

    /// The valid kinds and their keys, as put in every `.badSpec` message.
    public static let validKinds = "valid kinds: sim:size=SIZE[,dirty-rate=SIZE/s][,hot=PCT][,profile=mixed|zero|random|text][,seed=N][,chunk=SIZE]; vfio-emu:size=SIZE[,dirty-rate=SIZE][,seed=N]; file:PATH; vfio:PATH"

    private static func bad(_ what: String) -> DeviceError {
        DeviceError(.badSpec, "\(what); \(validKinds)")
    }

    /// Parses `text`.
    /// - Throws: `.badSpec` naming what is wrong and listing the valid kinds and keys.
    public init(_ text: String) throws(DeviceError) {
        self.text = text
        guard let colon = text.firstIndex(of: ":") else {
            throw Self.bad("device spec '\(text)' has no kind (expected KIND:...)")
        }
        let kindName = String(text[..<colon])
        let rest = String(text[text.index(after: colon)...])
        switch kindName {
        case "file", "vfio":
            guard !rest.isEmpty else { throw Self.bad("missing path in '\(text)'") }
            kind = kindName == "file" ? .file(path: rest) : .vfio(path: rest)
        case "sim":
            var o = SimOptions()
            for (key, value) in try Self.pairs(rest, text) {
                switch key {
                case "size": o.size = try Self.size(value, key, text); o.sizeGiven = true
                case "dirty-rate": o.dirtyRate = try Self.size(value, key, text, rate: true)
                case "hot":
                    guard let f = Self.parseFraction(value) else {
                        throw Self.bad("bad value '\(value)' for hot in '\(text)' (expected a percentage like 10% or a fraction like 0.1)")
                    }
                    o.hotFraction = f
                case "profile":
                    guard let p = ContentProfile(rawValue: value) else {
                        throw Self.bad("bad value '\(value)' for profile in '\(text)' (expected mixed, zero, random or text)")
                    }
                    o.profile = p
                case "seed": o.seed = try Self.seed(value, text)
                case "chunk":
                    let c = try Self.size(value, key, text)
                    guard c >= 4096, c <= 1 << 30, c & (c - 1) == 0 else {
                        throw Self.bad("bad value '\(value)' for chunk in '\(text)' (expected a power of two from 4K to 1G)")
                    }
                    o.chunkSize = Int(c)
                default:
                    throw Self.bad("unknown key '\(key)' for kind sim in '\(text)'")
                }
            }
            try Self.checkStateSize(o.size, text)
            kind = .sim(o)
        case "vfio-emu":
            var size: UInt64?
            var rate: UInt64 = 0
            var seed: UInt64 = 1
            for (key, value) in try Self.pairs(rest, text) {
                switch key {
                case "size": size = try Self.size(value, key, text)
                case "dirty-rate": rate = try Self.size(value, key, text, rate: true)
                case "seed": seed = try Self.seed(value, text)
                default: throw Self.bad("unknown key '\(key)' for kind vfio-emu in '\(text)'")
                }
            }
            guard let size else { throw Self.bad("missing size= in '\(text)'") }
            try Self.checkStateSize(size, text)
            var o = EmulatedOptions(size: size)
            o.dirtyRate = rate
            o.seed = seed
            kind = .vfioEmu(o)
        default:
            throw Self.bad("unknown device kind '\(kindName)' in '\(text)'")
        }
    }

    private static func pairs(_ rest: String, _ text: String) throws(DeviceError) -> [(String, String)] {
        if rest.isEmpty { return [] }
        var out: [(String, String)] = []
        for item in rest.split(separator: ",", omittingEmptySubsequences: false) {
            guard let eq = item.firstIndex(of: "="), eq != item.startIndex else {
                throw bad("'\(item)' in '\(text)' is not KEY=VALUE")
            }
            out.append((String(item[..<eq]), String(item[item.index(after: eq)...])))
        }
        return out
    }

    private static func size(_ value: String, _ key: String, _ text: String, rate: Bool = false) throws(DeviceError) -> UInt64 {
        var v = Substring(value)
        if rate && v.hasSuffix("/s") { v = v.dropLast(2) }
        do {
            return try SizeParsing.parse(String(v))
        } catch {
            throw bad("bad value '\(value)' for \(key) in '\(text)': \(error.reason); accepted forms: \(SizeParsing.acceptedForms)\(rate ? ", optionally followed by /s" : "")")
        }
    }

    private static func seed(_ value: String, _ text: String) throws(DeviceError) -> UInt64 {
        let n = value.hasPrefix("0x") ? UInt64(value.dropFirst(2), radix: 16) : UInt64(value)
        guard let n else { throw bad("bad value '\(value)' for seed in '\(text)' (expected an unsigned integer)") }
        return n
    }

    private static func checkStateSize(_ size: UInt64, _ text: String) throws(DeviceError) {
        guard size > 0, size % 4096 == 0 else {
            throw bad("size \(size) in '\(text)' must be a positive multiple of 4K")
        }
    }

    /// Parses `10%` or `0.1` into a fraction in 0...1; nil if invalid.
    public static func parseFraction(_ s: String) -> Double? {
        let f: Double?
        if s.hasSuffix("%") { f = Double(s.dropLast()).map { $0 / 100 } } else { f = Double(s) }
        guard let f, f >= 0, f <= 1, f.isFinite else { return nil }
        return f
    }

    /// Opens the device as a migration source (a `sim`/`vfio-emu` source starts in RUNNING with its
    /// content and workload; a file is opened read-only).
    public func makeSource() throws(DeviceError) -> any MigratableDevice {
        try makeSource(workloadClock: { Monotonic.now })
    }

    /// `makeSource()`, with a `sim:` device's workload keeping time by `workloadClock`.
    package func makeSource(workloadClock: @escaping @Sendable () -> Duration) throws(DeviceError) -> any MigratableDevice {
        switch kind {
        case .sim(let o):
            return try SimulatedDevice(size: o.size, dirtyRate: o.dirtyRate, hotFraction: o.hotFraction,
                                       profile: o.profile, seed: o.seed, chunkSize: o.chunkSize, spec: text,
                                       workloadClock: workloadClock)
        case .vfioEmu(let o):
            return try EmulatedVFIODevice(size: o.size, dirtyRate: o.dirtyRate, seed: o.seed, spec: text)
        case .file(let path):
            return try FileDevice(sourcePath: path)
        case .vfio(let path):
            return try VFIODevice(path: path)
        }
    }

    /// Checks that this spec can be a migration destination, before any peer is heard: a `sim:`
    /// destination must give `size=` (its memory is allocated locally, so its size is never
    /// taken from the peer).
    public func checkDestination() throws(DeviceError) {
        if case .sim(let o) = kind, !o.sizeGiven {
            throw DeviceError(.badSpec, "destination spec '\(text)' has no size=; a sim: destination allocates its memory here and never takes the size from the source: give size= (the source's device size)")
        }
    }

    /// Opens the device as a migration destination, empty, in RESUMING. `size` is the source's state
    /// size (from the peer, so it is checked before anything is allocated): for `sim:` and
    /// `vfio-emu:` it must equal the spec's `size=` (a `sim:` destination without `size=` is
    /// refused: `checkDestination`); for `file:` it is required, and the file is written through
    /// `PATH.partial`, refused beforehand if the file system lacks the space (`FileDevice`).
    public func makeDestination(size: UInt64?) throws(DeviceError) -> any MigratableDevice {
        switch kind {
        case .sim(let o):
            try checkDestination()
            if let size, size != o.size {
                throw Self.bad("destination spec '\(text)' says size=\(o.size) but the source has \(size) bytes; give the source's size")
            }
            return try SimulatedDevice(destinationSize: o.size, chunkSize: o.chunkSize, spec: text)
        case .vfioEmu(let o):
            if let size, size != o.size {
                throw Self.bad("destination spec '\(text)' says size=\(o.size) but the source has \(size) bytes; give the source's size")
            }
            return try EmulatedVFIODevice(destinationSize: o.size, spec: text)
        case .file(let path):
            guard let size else {
                throw DeviceError(.badSpec, "destination '\(text)': a file destination needs the source's size to create the file")
            }
            return try FileDevice(destinationPath: path, size: size)
        case .vfio(let path):
            return try VFIODevice(path: path)
        }
    }
}
