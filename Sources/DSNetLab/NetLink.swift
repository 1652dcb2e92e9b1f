import Foundation
import Glibc

/// Two network namespaces joined by a veth pair: a real (virtual) link between a source and a
/// destination on one machine, for tests and `stream-bench migration --link`. Needs root and
/// iproute2. The namespaces (and the veth pair with them) are deleted by `close()` or deinit.
///
/// Shaping: each direction gets `netem rate R delay D` when the kernel has sch_netem. Without it
/// (some cloud kernels ship no qdisc modules) the rate is applied with `tbf` and the delay cannot
/// be added: `delayApplied` is false and `description` says so, so a table made over such a
/// link never claims a latency it did not have.
public final class NetLink: @unchecked Sendable {
    // @unchecked: immutable after init, except `closed`, which only `close()` touches.
    public struct Shape: Sendable, Equatable {
        public var name: String
        /// A tc rate ("1gbit"), or nil for an unshaped veth.
        public var rate: String?
        /// Bits per second of `rate`.
        public var bitsPerSecond: Double?
        /// A tc time ("1ms"), or nil.
        public var delay: String?
        public init(name: String, rate: String?, bitsPerSecond: Double?, delay: String?) {
            self.name = name; self.rate = rate; self.bitsPerSecond = bitsPerSecond; self.delay = delay
        }
        public static let veth = Shape(name: "veth", rate: nil, bitsPerSecond: nil, delay: nil)
        public static let gigabit = Shape(name: "1gbit-1ms", rate: "1gbit", bitsPerSecond: 1e9, delay: "1ms")
        public static let tenGigabit = Shape(name: "10gbit-0.2ms", rate: "10gbit", bitsPerSecond: 1e10, delay: "200us")
        public static let all = [veth, gigabit, tenGigabit]
        public static func named(_ s: String) -> Shape? { all.first { $0.name == s } }
    }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    public let shape: Shape
    /// Namespace names.
    public let sourceNamespace: String, destinationNamespace: String
    public let sourceAddress = "10.77.0.1", destinationAddress = "10.77.0.2"
    /// Whether the delay was applied (false when sch_netem is missing).
    public private(set) var delayApplied = false
    /// What shaping is really in place, for reports.
    public private(set) var description = ""
    private var closed = false
    nonisolated(unsafe) private static var counter = 0

    public init(_ shape: Shape) throws {
        self.shape = shape
        NetLink.counter += 1
        let tag = "ds\(getpid())x\(NetLink.counter)"
        sourceNamespace = tag + "a"
        destinationNamespace = tag + "b"
        guard getuid() == 0 else {
            throw Failure(description: "a network-namespace link needs root (ip netns add); run as root")
        }
        do {
            try Self.ip(["netns", "add", sourceNamespace])
            try Self.ip(["netns", "add", destinationNamespace])
            try Self.ip(["link", "add", "vsrc", "netns", sourceNamespace, "type", "veth", "peer", "name", "vdst", "netns", destinationNamespace])
            for (ns, dev, addr) in [(sourceNamespace, "vsrc", sourceAddress), (destinationNamespace, "vdst", destinationAddress)] {
                try Self.ip(["-n", ns, "addr", "add", addr + "/24", "dev", dev])
                try Self.ip(["-n", ns, "link", "set", "lo", "up"])
                try Self.ip(["-n", ns, "link", "set", dev, "up"])
            }
            var parts: [String] = ["veth"]
            if let rate = shape.rate, let bps = shape.bitsPerSecond {
                var netem = true
                for (ns, dev) in [(sourceNamespace, "vsrc"), (destinationNamespace, "vdst")] {
                    var args = ["netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "netem", "rate", rate, "limit", "100000"]
                    if let d = shape.delay { args += ["delay", d] }
                    if netem, (try? Self.ip(args)) != nil { continue }
                    netem = false
                    // tbf: a bucket of 4 ms at the rate (at least 256 KiB), a queue of 20 ms.
                    let burst = max(Int(bps / 8 / 250), 256 << 10)
                    try Self.ip(["netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate,
                                 "burst", "\(burst)", "latency", "20ms"])
                }
                delayApplied = netem && shape.delay != nil
                parts.append(netem ? "netem rate \(rate)" : "tbf rate \(rate)")
                if let d = shape.delay {
                    parts.append(delayApplied ? "delay \(d) each way" : "no added delay (sch_netem is not in this kernel; asked for \(d))")
                }
            }
            description = parts.joined(separator: ", ")
        } catch {
            close()
            throw error
        }
    }

    deinit { close() }

    /// Deletes both namespaces (and the veth pair). Idempotent.
    public func close() {
        guard !closed else { return }
        closed = true
        _ = try? Self.ip(["netns", "del", sourceNamespace])
        _ = try? Self.ip(["netns", "del", destinationNamespace])
    }

    /// `args` run inside the source's (or the destination's) namespace.
    public func inSource(_ args: [String]) -> [String] { ["ip", "netns", "exec", sourceNamespace] + args }
    public func inDestination(_ args: [String]) -> [String] { ["ip", "netns", "exec", destinationNamespace] + args }

    /// Where iproute2's `ip` is.
    public static var ipPath: String { FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") ? "/usr/sbin/ip" : "/sbin/ip" }

    /// Runs `ip ARGS` and fails with its stderr.
    @discardableResult
    static func ip(_ args: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: ipPath)
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        do { try p.run() } catch {
            throw Failure(description: "cannot run ip (install iproute2): \(error)")
        }
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw Failure(description: "ip \(args.joined(separator: " ")) failed: \(String(decoding: e, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        return String(decoding: o, as: UTF8.self)
    }
}
