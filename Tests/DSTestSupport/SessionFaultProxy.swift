import Glibc
import Synchronization
import DSSupport
import DSTransport

/// A TCP proxy for a whole session: it accepts every connection a sender makes (one per
/// channel), forwards each both ways to `target`, and injects one `FaultProxy.Fault` into one
/// direction of one connection (by accept order: channel 0 connects first). For soak and chaos
/// tests; `FaultProxy` is the one-connection version.
///
/// Faults, at a byte offset of the chosen direction's stream:
/// - `flip(at:)`: that byte's lowest bit is flipped;
/// - `truncate(after:)`: the bytes up to it are forwarded, then that direction ends (FIN), and
///   whatever the sender still sends is read and dropped;
/// - `kill(after:)`: the bytes up to it are forwarded, then both directions die at once (RST);
/// - `stall(after:for:)`: the bytes up to it are forwarded, then nothing moves either way on
///   that connection for the duration (bytes wait in the proxy), then forwarding goes on;
/// - `flipAfterSwitchover`, `truncateAfterSwitchover`: as in `FaultProxy` (plaintext, sender to
///   receiver only).
///
/// `join()` stops accepting and waits for every connection to end (both peers closed, or a
/// fault ended it); it leaves no thread or descriptor behind.
package final class SessionFaultProxy: @unchecked Sendable {
    // @unchecked: `threads` and `connections` are guarded by `lock`; `state` is a Mutex; the
    // rest is immutable.
    package enum Direction: String, Sendable { case toServer = "to-destination", toClient = "to-source" }

    package let port: UInt16
    private let listenFD: Int32
    private let target: Endpoint
    private let fault: FaultProxy.Fault
    private let faultConnection: Int
    private let faultDirection: Direction
    private let lock = ConditionLock()
    private var threads: [OSThread] = []
    private var acceptThread: OSThread?
    private var accepted = 0
    private let state = Mutex(State())

    /// What happened, for the test's report.
    package struct State: Sendable {
        /// Connections accepted.
        package var connections = 0
        /// Bytes forwarded per connection (by accept order), each way.
        package var toServerBytes: [Int] = []
        package var toClientBytes: [Int] = []
        /// Whether the fault was injected (the stream reached its offset).
        package var fired = false
    }

    package init(to target: Endpoint, fault: FaultProxy.Fault, connection: Int = 0, direction: Direction = .toServer) throws {
        (listenFD, port) = try Sockets.listen(Endpoint(host: "127.0.0.1", port: 0))
        self.target = target
        self.fault = fault
        faultConnection = connection
        faultDirection = direction
        acceptThread = try OSThread(name: "ds-test-accept") { [self] in acceptLoop() }
    }

    package var endpoint: Endpoint { Endpoint(host: "127.0.0.1", port: port) }
    package var report: State { state.withLock { $0 } }

    /// Stops accepting, waits for every connection to end, closes the listening socket.
    package func join() {
        shutdown(listenFD, Int32(SHUT_RDWR))  // wakes the accept
        acceptThread?.join()
        acceptThread = nil
        for t in lock.withLock({ defer { threads = [] }; return threads }) { t.join() }
        close(listenFD)
    }

    private func acceptLoop() {
        while true {
            let client = accept(listenFD, nil, nil)
            if client < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                return  // shut down by join()
            }
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            let index = lock.withLock { defer { accepted += 1 }; return accepted }
            state.withLock { $0.connections += 1; $0.toServerBytes.append(0); $0.toClientBytes.append(0) }
            let server = connectTarget()
            guard server >= 0 else { close(client); continue }
            let pair = Pair(client: client, server: server)
            let faulty = index == faultConnection
            do {
                let t = try OSThread(name: "ds-test-proxy") { [self] in
                    let back = try? OSThread(name: "ds-test-proxy") { [self] in
                        pump(pair, .toClient, index: index, fault: faulty && faultDirection == .toClient ? fault : .none)
                    }
                    pump(pair, .toServer, index: index, fault: faulty && faultDirection == .toServer ? fault : .none)
                    back?.join()
                    close(pair.client)
                    close(pair.server)
                }
                lock.withLock { threads.append(t) }
            } catch {
                close(client); close(server)
            }
        }
    }

    private func connectTarget() -> Int32 {
        let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { return -1 }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET); addr.sin_port = target.port.bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        if rc != 0 { close(s); return -1 }
        return s
    }

    /// One connection's two sockets and what its two pumps share.
    private final class Pair: Sendable {
        let client: Int32
        let server: Int32
        /// The connection was killed (both pumps stop).
        let killed = Atomic<Bool>(false)
        /// Until when (monotonic nanoseconds) nothing is forwarded either way; 0: no stall.
        let stallUntil = Atomic<Int64>(0)
        init(client: Int32, server: Int32) { self.client = client; self.server = server }
    }

    private static func nowNanos() -> Int64 {
        let d = Monotonic.now
        return d.components.seconds * 1_000_000_000 + d.components.attoseconds / 1_000_000_000
    }

    /// Waits out a stall of the connection (either pump may have started it).
    private static func waitOutStall(_ pair: Pair) {
        while !pair.killed.load(ordering: .acquiring) {
            let until = pair.stallUntil.load(ordering: .acquiring)
            let now = nowNanos()
            if until <= now { return }
            usleep(useconds_t(min(until - now, 10_000_000) / 1000))
        }
    }

    private static func sendAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = send(fd, bytes.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL))
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            off += n
        }
        return true
    }

    /// Forwards one direction until its sender closes (then passes the FIN on), injecting `fault`.
    private func pump(_ pair: Pair, _ direction: Direction, index: Int, fault: FaultProxy.Fault) {
        let (from, to) = direction == .toServer ? (pair.client, pair.server) : (pair.server, pair.client)
        var buf = [UInt8](repeating: 0, count: 65536)
        var total = 0  // bytes of this direction forwarded so far
        var tracker = FrameTracker()
        var fault = fault
        var stalled = false
        defer {
            state.withLock { s in
                if direction == .toServer { s.toServerBytes[index] = total } else { s.toClientBytes[index] = total }
            }
        }
        /// Forwards `buf[range]`; false when the receiving side is gone.
        func forward(_ range: Range<Int>) -> Bool {
            guard !range.isEmpty else { return true }
            let ok = buf.withUnsafeBytes { Self.sendAll(to, UnsafeRawBufferPointer(rebasing: $0[range])) }
            if ok { total += range.count }
            return ok
        }
        while true {
            let n = buf.withUnsafeMutableBytes { recv(from, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 || pair.killed.load(ordering: .acquiring) { break }
            if direction == .toServer {
                tracker.feed(buf[0..<n])
                if let s = tracker.switchoverEnd {
                    if case .flipAfterSwitchover = fault { fault = .flip(at: s + 45) }
                    if case .truncateAfterSwitchover = fault { fault = .truncate(after: s + 10) }
                }
            }
            var start = 0
            switch fault {
            case .flip(let at) where at >= total && at < total + n:
                buf[at - total] ^= 0x01
                fired()
            case .truncate(let at) where total + n > at:
                _ = forward(0..<(at - total))
                fired()
                shutdown(to, Int32(SHUT_WR))
                Self.drain(from)
                return
            case .kill(let at) where total + n > at:
                _ = forward(0..<(at - total))
                fired()
                Self.kill(pair)
                return
            case .stall(let at, let duration) where !stalled && total + n > at:
                stalled = true
                start = at - total
                guard forward(0..<start) else { break }
                fired()
                let c = duration.components
                pair.stallUntil.store(Self.nowNanos() + c.seconds * 1_000_000_000 + c.attoseconds / 1_000_000_000, ordering: .releasing)
            default: break
            }
            Self.waitOutStall(pair)
            if pair.killed.load(ordering: .acquiring) || !forward(start..<n) { break }
        }
        // The sender closed (or the receiving side went away): pass the end on, unless killed.
        if !pair.killed.load(ordering: .acquiring) { shutdown(to, Int32(SHUT_WR)) }
    }

    private func fired() { state.withLock { $0.fired = true } }

    /// Reads and drops everything until the peer closes (a truncated direction).
    private static func drain(_ fd: Int32) {
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
        }
    }

    /// Both directions die at once: a reset on close (linger 0), and the other pump woken.
    private static func kill(_ pair: Pair) {
        pair.killed.store(true, ordering: .releasing)
        var lin = linger(l_onoff: 1, l_linger: 0)
        setsockopt(pair.server, SOL_SOCKET, SO_LINGER, &lin, socklen_t(MemoryLayout<linger>.size))
        setsockopt(pair.client, SOL_SOCKET, SO_LINGER, &lin, socklen_t(MemoryLayout<linger>.size))
        // SHUT_RD wakes the other pump's recv without sending a FIN; the close after both
        // pumps end sends the resets.
        shutdown(pair.server, Int32(SHUT_RD))
        shutdown(pair.client, Int32(SHUT_RD))
    }
}
