import DSRing
import DSWire
import Synchronization
import DSSupport

/// How a point-to-point transfer (or a migration's data path) runs.
public struct TransferOptions: Sendable {
    /// TCP connections (channels); each is one thread, one ring, one socket.
    public var connections = 2
    /// LZ4 block compression per chunk (false: `--compression none`).
    public var compression = true
    /// LZ4 acceleration (`--acceleration`).
    public var acceleration = 1
    /// Raw bytes per chunk (`--chunk-size`).
    public var chunkSize = 1 << 20
    /// How long a peer may make no progress before the transfer fails (stall detection).
    public var timeout: Duration = .seconds(30)
    /// The most memory the session's buffers may take, all channels together (`--memory-budget`):
    /// per channel two pool slots of a chunk (and its LZ4 bound), an LZ4 state and, with TLS,
    /// the record buffers (`sessionMemory`). A sender refuses options over it; a receiver refuses
    /// a session whose sender asks for more, before it allocates anything.
    public var memoryBudget = 256 << 20
    /// Force a backend for this session's rings (nil: the process-wide probe,
    /// `IOBackend.probed`). `.blocking` suits hosts whose seccomp filter forbids io_uring: io_uring
    /// is then never touched. The library reads no environment; the CLIs set this from
    /// `DEVSTREAM_IO_BACKEND`.
    public var backend: IOBackendKind?
    /// TLS 1.3 for every channel (PSK or mutual x509). nil: no security at all, which a session
    /// refuses unless `allowInsecure` (see `checkPlaintext`).
    public var security: SecurityOptions?
    /// Allow a session without `security` (`--insecure`): plaintext and unauthenticated, on any
    /// address. It gives up all protection: any local user can reach a loopback listener (and
    /// join, feed or take a session), and anyone on the path can read or change the data. Only
    /// for a host and network where every user is trusted. Without it, a session with no
    /// `security` is refused before it binds or connects, loopback included.
    public var allowInsecure = false
    public init() {}

    /// Refuses a session without `security` unless `allowInsecure`, on every address (loopback
    /// included: other local users can reach it): called by the sender before connecting and by
    /// the listener before binding.
    public func checkPlaintext(_ endpoint: Endpoint) throws(TransferError) {
        guard security == nil, !allowInsecure else { return }
        throw TransferError(.usage, "a session to or on \(endpoint) without security options is refused: it would be plaintext and unauthenticated, so any local user (loopback included) could join or take it and anyone on the path could read or change it; set TransferOptions.security (a pre-shared key or certificates), or allowInsecure to accept that",
                            hint: Self.securityHint)
    }

    /// What to do about a session without security, in the CLI's terms.
    package static let securityHint = "give both ends the same --psk-file FILE (`devstream receive` makes a one-time key and prints its path; --key-out FILE picks it) or --tls-cert/--tls-key/--tls-ca; --insecure gives up all protection"

    /// Bytes one channel's buffers take: two pool slots (a chunk's LZ4 bound and a frame header
    /// each, in whole pages), the LZ4 state and, with TLS, the record buffers.
    package static func channelMemory(chunkSize: Int, tls: Bool) -> Int {
        let page = 4096
        let slot = (WireLimits.payloadCapacity(chunkSize: chunkSize) + FrameHeader.size + page - 1) / page * page
        return 2 * slot + (16 << 10) + (tls ? SecureStream.sendCapacity + SecureStream.receiveCapacity : 0)
    }

    /// Bytes a session of `connections` channels of `chunkSize` chunks takes in buffers.
    package static func sessionMemory(connections: Int, chunkSize: Int, tls: Bool) -> Int {
        connections * channelMemory(chunkSize: chunkSize, tls: tls)
    }

    /// Why a session of `connections` channels of `chunkSize` chunks does not fit `budget`; nil
    /// when it does.
    package static func overBudget(connections: Int, chunkSize: Int, tls: Bool, budget: Int) -> String? {
        let need = sessionMemory(connections: connections, chunkSize: chunkSize, tls: tls)
        guard need > budget else { return nil }
        return "\(connections) connections of \(chunkSize >> 10) KiB chunks\(tls ? " over TLS" : "") need \(need >> 20) MiB of buffers, over the session's memory budget of \(budget >> 20) MiB"
    }

    /// Checks the options; the message says which option and what is allowed, the hint names
    /// the CLI flag.
    public func validate() throws(TransferError) {
        guard connections >= 1, connections <= Int(WireLimits.maxChannels) else {
            throw TransferError(.usage, "TransferOptions.connections must be 1...\(WireLimits.maxChannels), got \(connections)", hint: "--connections")
        }
        guard chunkSize >= WireLimits.minChunkSize, chunkSize <= WireLimits.maxChunkSize else {
            throw TransferError(.usage, "TransferOptions.chunkSize must be between 4K and 16M, got \(chunkSize)", hint: "--chunk-size")
        }
        guard acceleration >= 1, acceleration <= 65537 else {
            throw TransferError(.usage, "TransferOptions.acceleration must be 1...65537, got \(acceleration)", hint: "--acceleration")
        }
        guard memoryBudget > 0 else {
            throw TransferError(.usage, "TransferOptions.memoryBudget must be positive, got \(memoryBudget)", hint: "--memory-budget")
        }
        if let over = Self.overBudget(connections: connections, chunkSize: chunkSize, tls: security != nil, budget: memoryBudget) {
            throw TransferError(.usage, "\(over): use fewer connections or a smaller chunk size, or raise TransferOptions.memoryBudget",
                                hint: "--connections, --chunk-size or --memory-budget")
        }
    }
}

/// What a finished (or failed) transfer reports.
package struct TransferReport: Sendable {
    package var completed: Bool
    package var error: TransferError?
    /// Raw bytes moved.
    package var bytes: UInt64 = 0
    /// Frame bytes on the wire once the session was admitted, both ways: data, control and
    /// keepalive frames, header and payload (not the preamble and accept, TLS overhead or TCP/IP
    /// headers). A complete transfer reports the same figure at both ends; a failed one reports
    /// what its progress had counted (the data frames, and at the receiver the keepalives before
    /// them).
    package var wireBytes: UInt64 = 0
    /// Keepalive frames (each 40 bytes of `wireBytes`), both ways; equal at both ends of a
    /// complete transfer.
    package var keepalives: UInt64 = 0
    package var chunks: UInt64 = 0
    package var elapsed: Duration = .zero
    package var connections: Int
    package var compression: Bool
    /// The transfer digest (hex), equal at both ends for a complete transfer.
    package var digest: UInt64?
    /// The backend the channels' rings ran on (before any ran: the one the session chose).
    package var backend: IOBackendKind
    /// Which protection the session had (or would have had, when it failed before starting).
    package var protection: SessionProtection = .insecure
    package var throughput: Double { elapsed > .zero ? Double(bytes) / elapsed.seconds : 0 }
}

/// Live progress, readable from any thread (for progress lines).
package final class TransferProgress: Sendable {
    private let _bytes = Atomic<UInt64>(0)
    private let _wire = Atomic<UInt64>(0)
    package let total = Atomic<UInt64>(UInt64.max)
    package init() {}
    package var bytes: UInt64 { _bytes.load(ordering: .relaxed) }
    package var wireBytes: UInt64 { _wire.load(ordering: .relaxed) }
    package func add(bytes: UInt64, wire: UInt64) {
        _bytes.add(bytes, ordering: .relaxed)
        _wire.add(wire, ordering: .relaxed)
    }
}
