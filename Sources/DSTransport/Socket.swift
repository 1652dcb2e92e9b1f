import Glibc
import DSRing
import DSSupport

/// A parsed `HOST:PORT` (IPv4 or `[IPv6]`, or a name resolved with getaddrinfo).
public struct Endpoint: Sendable, CustomStringConvertible {
    public var host: String
    public var port: UInt16
    public init(host: String, port: UInt16) { self.host = host; self.port = port }

    /// Parses `HOST:PORT`, `[V6]:PORT`.
    public static func parse(_ s: String) throws(TransferError) -> Endpoint {
        let usage = "expected HOST:PORT (e.g. 127.0.0.1:7000 or [::1]:7000), got '\(s)'"
        var host: Substring, portText: Substring
        if s.hasPrefix("[") {
            guard let close = s.firstIndex(of: "]"), s[s.index(after: close)...].hasPrefix(":") else { throw TransferError(.usage, usage) }
            host = s[s.index(after: s.startIndex)..<close]
            portText = s[s.index(close, offsetBy: 2)...]
        } else {
            guard let colon = s.lastIndex(of: ":") else { throw TransferError(.usage, usage) }
            host = s[..<colon]
            portText = s[s.index(after: colon)...]
        }
        guard !host.isEmpty, let port = UInt16(portText) else { throw TransferError(.usage, usage) }
        return Endpoint(host: String(host), port: port)
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Resolves to a sockaddr (the first result).
    func resolve() throws(TransferError) -> (storage: sockaddr_storage, length: socklen_t, family: Int32) {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_NUMERICSERV
        var res: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &res)
        guard rc == 0, let ai = res else {
            throw TransferError(.usage, "cannot resolve '\(host)': \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(res) }
        var storage = sockaddr_storage()
        memcpy(&storage, ai.pointee.ai_addr, Int(ai.pointee.ai_addrlen))
        return (storage, ai.pointee.ai_addrlen, ai.pointee.ai_family)
    }
}

/// Socket set-up helpers (plain syscalls: set-up is not the data path).
package enum Sockets {
    /// Connects a new TCP socket through `ring` (IORING_OP_CONNECT); the caller wraps it in a
    /// `Connection`, which closes it.
    package static func connect(_ endpoint: Endpoint, ring: Ring, timeout: Duration) throws(TransferError) -> Int32 {
        var (storage, length, family) = try endpoint.resolve()
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TransferError(.connect, "socket() failed: \(Errno.current)") }
        configure(fd)
        do {
            _ = try withUnsafePointer(to: &storage) { p throws(Errno) in
                try ring.perform(.connect(fd: fd, address: UnsafeRawPointer(p), length: length), timeout: timeout)
            }
        } catch {
            close(fd)
            if error == .connectionReset {
                // The receiver accepted and reset at once, before our connect completed here: what
                // a devstream receiver does to a connection it cannot admit (a busy machine may
                // see the reset this early rather than in the handshake).
                throw TransferError(.rejected, "cannot connect to \(endpoint): the receiver reset the connection before it was authenticated (\(error)): a devstream receiver does that to a connection it cannot admit (too many waiting to authenticate, or not done within its admission deadline), and answers wrong credentials with a TLS alert instead; or the receiver went away. Retry, and check what else connects to the receiver")
            }
            guard error == .connectionRefused else { throw TransferError(.connect, "cannot connect to \(endpoint): \(error)") }
            throw TransferError(.connect, "cannot connect to \(endpoint): \(error); is a receiver listening there?",
                                hint: "is `devstream receive --listen \(endpoint)` running there?")
        }
        return fd
    }

    /// Checks sockets handed in by the caller: `count` of them, each an open stream socket,
    /// and, without security options or `allowInsecure`, each a Unix socket whose peer runs as
    /// this process's user (SO_PEERCRED): the kernel vouches for that peer, as a key would.
    /// A TCP socket, loopback included, needs security options (other local users reach
    /// loopback) or `allowInsecure`.
    package static func checkAdopted(_ fds: [Int32], count: Int, options: TransferOptions) throws(TransferError) {
        guard fds.count == count else {
            throw TransferError(.usage, "\(fds.count) sockets were handed in for a \(count)-connection session", hint: "hand in one connected socket per connection")
        }
        for fd in fds {
            var type: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0, type == Int32(SOCK_STREAM.rawValue) else {
                throw TransferError(.usage, "descriptor \(fd) is not an open stream socket", hint: "hand in connected TCP or Unix stream sockets")
            }
            if options.security == nil && !options.allowInsecure && !isSameUserUnixPeer(fd) {
                throw TransferError(.usage, "socket \(fd) was handed in without security options: only a Unix socket whose peer runs as this user may carry a session without them; set the security options (a pre-shared key or certificates), or allowInsecure to accept a plaintext, unauthenticated session",
                                    hint: "set security options (PSK or x509) at both ends, or allowInsecure for a host and network where everyone is trusted")
            }
        }
    }

    /// Whether `fd` is a Unix socket whose peer's user id (SO_PEERCRED) is this process's.
    package static func isSameUserUnixPeer(_ fd: Int32) -> Bool {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        guard rc == 0, Int32(storage.ss_family) == AF_UNIX else { return false }
        // struct ucred { pid_t pid; uid_t uid; gid_t gid; } (Glibc's module hides it behind
        // _GNU_SOURCE): three 32-bit fields.
        var cred: (pid: Int32, uid: UInt32, gid: UInt32) = (0, 0, 0)
        var clen = socklen_t(MemoryLayout<(Int32, UInt32, UInt32)>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0, clen == 12 else { return false }
        return cred.uid == geteuid()
    }

    /// Socket options for data channels. Timeouts are per call (`Ring.perform(_:timeout:)`:
    /// io_uring waits with a deadline, the blocking backend polls), not SO_RCVTIMEO, so a call
    /// that asks for a longer wait (the ack after an fsync) gets it.
    package static func configure(_ fd: Int32) {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))  // fails harmlessly on a Unix socket
    }

    /// A listening socket on `endpoint` (port 0 picks a free port); returns it and the real port.
    package static func listen(_ endpoint: Endpoint) throws(TransferError) -> (fd: Int32, port: UInt16) {
        var (storage, length, family) = try endpoint.resolve()
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TransferError(.localIO, "socket() failed: \(Errno.current)") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let rc = withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        guard rc == 0 else {
            let e = Errno.current
            close(fd)
            throw TransferError(.usage, "cannot listen on \(endpoint): \(e)")
        }
        guard Glibc.listen(fd, 64) == 0 else {
            let e = Errno.current
            close(fd)
            throw TransferError(.localIO, "listen() on \(endpoint) failed: \(e)")
        }
        var bound = sockaddr_storage()
        var blen = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &bound) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &blen) } }
        let port: UInt16 = withUnsafePointer(to: &bound) { p in
            family == AF_INET6
                ? p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin6_port) }
                : p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) }
        }
        return (fd, port)
    }
}
