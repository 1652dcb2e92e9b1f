import Glibc
import Foundation
import DSRing
import DSWire
import DSCodec
import DSTransport
import DSSupport

package func tmpPath(_ name: String) -> String {
    "/tmp/dstransport-\(getpid())-\(UInt32.random(in: 0...UInt32.max))-\(name)"
}

/// Seeded bytes with mixed compressibility: zero runs, a counter pattern, random.
package func testData(_ count: Int, seed: UInt64) -> [UInt8] {
    var s = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    var out = [UInt8](repeating: 0, count: count)
    var i = 0
    while i < count {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17
        let run = min(count - i, 4096 + Int(s % 60000))
        switch s % 3 {
        case 0: break // zeros
        case 1: for j in 0..<run { out[i + j] = UInt8(truncatingIfNeeded: (i + j) / 7) }
        default:
            var r = s
            for j in 0..<run { r ^= r << 13; r ^= r >> 7; r ^= r << 17; out[i + j] = UInt8(truncatingIfNeeded: r) }
        }
        i += run
    }
    return out
}

package func writeFile(_ path: String, _ bytes: [UInt8]) {
    _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
}

/// Writes `bytes` to a new file only its owner can read (0600): a key file.
package func writePrivateFile(_ path: String, _ bytes: [UInt8]) {
    unlink(path)
    let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
    precondition(fd >= 0, "cannot create \(path)")  // a test fixture
    fchmod(fd, 0o600)
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
}

/// The file's bytes (nil when it cannot be read). With read(2): Foundation's
/// `FileManager.contents(atPath:)` leaks a 4 KiB buffer on an empty file (LeakSanitizer).
package func readFile(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 1 << 20)
    while true {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n < 0 { return nil }
        if n == 0 { return out }
        out += buf[0..<n]
    }
}

package func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

/// Options for a data-path test. They allow plaintext explicitly (`allowInsecure`): these tests
/// are about the data path, and several read or change frames on the wire (`FaultProxy`); the
/// security tests set `security` (and the tests of the secure default leave this out).
package func options(connections: Int = 2, compression: Bool = true, chunk: Int = 64 << 10, timeout: Duration = .seconds(5),
             backend: IOBackendKind? = nil) -> TransferOptions {
    var o = TransferOptions()
    o.allowInsecure = true
    o.connections = connections
    o.compression = compression
    o.chunkSize = chunk
    o.timeout = timeout
    o.backend = backend
    return o
}

/// Runs a receiver on a thread and a sender here; returns both reports.
package func transfer(source: String, output: String, options: TransferOptions, to endpoint: Endpoint? = nil,
              receiverOptions: TransferOptions? = nil, acceptTimeout: Duration = .seconds(10),
              receiverWarnings: (@Sendable (String) -> Void)? = nil) throws -> (sent: TransferReport, received: TransferReport) {
    let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: receiverOptions ?? options,
                                        warn: receiverWarnings ?? { _ in })
    nonisolated(unsafe) var received: TransferReport?
    let t = try OSThread(name: "ds-test") { received = receiver.receive(output: output, acceptTimeout: acceptTimeout) }
    let src = try TransferSource(path: source)
    let sent = TransferSender.send(src, to: endpoint ?? receiver.listener.endpoint, options: options, warn: { _ in })
    t.join()
    return (sent, received!)
}

/// A one-connection TCP proxy that forwards both ways and lets a test corrupt, truncate or
/// cut the client → server byte stream.
package final class FaultProxy: @unchecked Sendable {
    package enum Fault: Sendable, CustomStringConvertible {
        case none, flip(at: Int), truncate(after: Int), kill(after: Int), flipAfterSwitchover, truncateAfterSwitchover
        /// Forwards the bytes before the offset, then holds everything for the duration.
        case stall(after: Int, for: Duration)

        /// The fault's kind, without its offset.
        package var kind: String {
            switch self {
            case .none: "none"
            case .flip: "flip"
            case .truncate: "truncate"
            case .kill: "kill"
            case .stall: "stall"
            case .flipAfterSwitchover: "flip-after-switchover"
            case .truncateAfterSwitchover: "truncate-after-switchover"
            }
        }

        package var description: String {
            switch self {
            case .flip(let at): "flip at \(at)"
            case .truncate(let after): "truncate after \(after)"
            case .kill(let after): "kill after \(after)"
            case .stall(let after, let d): "stall after \(after) for \(d)"
            default: kind
            }
        }
    }
    package let listenFD: Int32
    package let port: UInt16
    private var thread: OSThread?

    package init(to target: Endpoint, fault: Fault) throws {
        (listenFD, port) = try Sockets.listen(Endpoint(host: "127.0.0.1", port: 0))
        let lfd = listenFD
        thread = try OSThread(name: "ds-test") {
            let client = accept(lfd, nil, nil)
            guard client >= 0 else { return }
            let server = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET); addr.sin_port = target.port.bigEndian
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(server, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            // server → client, verbatim.
            let back = try! OSThread(name: "ds-test-proxy") {  // a test fixture: no thread, no test
                var buf = [UInt8](repeating: 0, count: 65536)
                while true {
                    let n = buf.withUnsafeMutableBytes { recv(server, $0.baseAddress, $0.count, 0) }
                    if n <= 0 { break }
                    _ = buf.withUnsafeBytes { send(client, $0.baseAddress, n, Int32(MSG_NOSIGNAL)) }
                }
                shutdown(client, Int32(SHUT_WR))
            }
            var buf = [UInt8](repeating: 0, count: 65536)
            var total = 0
            var tracker = FrameTracker()
            var stalled = false
            loop: while true {
                let n = buf.withUnsafeMutableBytes { recv(client, $0.baseAddress, $0.count, 0) }
                if n <= 0 { break }
                var count = n
                tracker.feed(buf[0..<n])
                var fault = fault
                if let s = tracker.switchoverEnd {
                    // 45 bytes past the switchover frame: inside the next frame's payload.
                    if case .flipAfterSwitchover = fault { fault = .flip(at: s + 45) }
                    if case .truncateAfterSwitchover = fault { fault = .truncate(after: s + 10) }
                }
                switch fault {
                case .flip(let at) where at >= total && at < total + n: buf[at - total] ^= 0x01
                case .truncate(let after), .kill(let after):
                    if total + n > after {
                        count = after - total
                        _ = buf.withUnsafeBytes { send(server, $0.baseAddress, count, Int32(MSG_NOSIGNAL)) }
                        break loop
                    }
                case .stall(let after, let duration) where !stalled && total + n > after:
                    stalled = true
                    _ = buf.withUnsafeBytes { send(server, $0.baseAddress, after - total, Int32(MSG_NOSIGNAL)) }
                    sleep(for: duration)
                    _ = buf.withUnsafeBytes { send(server, $0.baseAddress! + (after - total), n - (after - total), Int32(MSG_NOSIGNAL)) }
                    total += n
                    continue loop
                default: break
                }
                _ = buf.withUnsafeBytes { send(server, $0.baseAddress, count, Int32(MSG_NOSIGNAL)) }
                total += count
            }
            if case .kill = fault {
                // A killed peer: both directions die at once.
                var lin = linger(l_onoff: 1, l_linger: 0)
                setsockopt(server, SOL_SOCKET, SO_LINGER, &lin, socklen_t(MemoryLayout<linger>.size))
                setsockopt(client, SOL_SOCKET, SO_LINGER, &lin, socklen_t(MemoryLayout<linger>.size))
                shutdown(server, Int32(SHUT_RDWR)); shutdown(client, Int32(SHUT_RDWR))
                close(server); close(client)
                back.join()
                return
            }
            shutdown(server, Int32(SHUT_WR))
            back.join()
            close(server); close(client)
        }
    }

    package var endpoint: Endpoint { Endpoint(host: "127.0.0.1", port: port) }
    package func join() { thread?.join(); close(listenFD) }
}

/// Connects a raw TCP socket to `endpoint`.
package func rawConnect(_ endpoint: Endpoint) -> Int32 {
    let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET); addr.sin_port = endpoint.port.bigEndian
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    return s
}

package func sendRaw(_ fd: Int32, _ bytes: [UInt8]) {
    _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
}

package func frameBytes(_ h: FrameHeader, payload: [UInt8] = []) -> [UInt8] {
    var b = [UInt8](repeating: 0, count: FrameHeader.size)
    b.withUnsafeMutableBytes { h.encode(into: $0) }
    return b + payload
}

/// Follows a sender's byte stream frame by frame (preamble, then 40-byte headers and their
/// payloads) to find where the `switchover` frame ends.
struct FrameTracker {
    var offset = 0
    var phase = 0  // 0 preamble, 1 header, 2 payload
    var need = Preamble.size
    var header: [UInt8] = []
    var switchoverEnd: Int?

    mutating func feed(_ bytes: ArraySlice<UInt8>) {
        var i = bytes.startIndex
        while i < bytes.endIndex {
            let take = min(need, bytes.endIndex - i)
            if phase == 1 { header += bytes[i..<(i + take)] }
            i += take; need -= take; offset += take
            guard need == 0 else { continue }
            switch phase {
            case 0: phase = 1; need = FrameHeader.size; header = []
            case 1:
                let wire = Int(header[8]) | Int(header[9]) << 8 | Int(header[10]) << 16 | Int(header[11]) << 24
                if header[0] == FrameType.switchover.rawValue && switchoverEnd == nil { switchoverEnd = offset + wire }
                if wire > 0 { phase = 2; need = wire } else { need = FrameHeader.size; header = [] }
            default: phase = 1; need = FrameHeader.size; header = []
            }
        }
    }
}

extension ErrorMessage {
    /// An `accept` frame, for tests that play a receiver by hand.
    package static var acceptFrameForTests: [UInt8] { acceptFrame }
}
