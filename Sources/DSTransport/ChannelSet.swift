import Glibc
import Synchronization
import DSRing
import DSWire

/// Opens the N channels of a session, one `WorkerGroup` thread each: shared by point-to-point
/// transfers and migrations.
public enum ChannelSet {
    /// Sender side: each thread makes its ring, connects, sends its preamble and waits for the
    /// receiver's `accept`. The caller closes `sockets` (indexed by channel) after shutting the
    /// group down.
    public static func connect(to endpoint: Endpoint, options: TransferOptions, mode: TransferMode, totalSize: UInt64?,
                               abort: AbortSignal, backend: IOBackendKind,
                               warn: @escaping @Sendable (String) -> Void) throws(TransferError) -> (group: WorkerGroup<Channel>, sockets: [Int32]) {
        let session = SessionID.random()
        let n = options.connections
        var features: FeatureBits = [.xxh3]
        if options.compression { features.insert(.lz4) }
        // By channel index (not connection order): channel 0 carries the control frames.
        let sockets = Mutex<[Int32]>([Int32](repeating: -1, count: n))
        do {
            let group = try WorkerGroup<Channel>(count: n, abort: abort) { (i) throws(TransferError) in
                let ring: Ring
                do { ring = try Ring(entries: 16, backend: backend) } catch {
                    throw TransferError(.localIO, "cannot create an I/O ring: \(error)")
                }
                let fd = try Sockets.connect(endpoint, ring: ring, timeout: options.timeout)
                sockets.withLock { $0[i] = fd }
                let guardian = abort.watch(fd)
                let ch = Channel(index: i, fd: fd, ring: ring, chunkSize: options.chunkSize, compression: options.compression,
                                 acceleration: options.acceleration, timeout: options.timeout, warn: i == 0 ? warn : { _ in })
                ch.socketGuard = guardian
                let preamble = Preamble(features: features, sessionID: session, channelIndex: UInt16(i), channelCount: UInt16(n),
                                        chunkSize: UInt32(options.chunkSize), mode: mode, totalSize: totalSize ?? Preamble.unknownSize)
                do { try preamble.encoded().withUnsafeBytes { try ring.sendAll(fd: fd, $0, timeout: options.timeout) } } catch {
                    throw TransferError.network(error as? Errno ?? .connectionReset, "sending the preamble", channel: i)
                }
                let reply = try ch.receive()
                guard reply.header.type == .accept else {
                    if reply.header.type == .reject, let m = try? ErrorMessage.decode(reply.control) {
                        throw TransferError(.rejected, "the receiver at \(endpoint) rejected the connection: \(m.message)")
                    }
                    throw Channel.unexpected(reply, expecting: "accept", channel: i)
                }
                return ch
            }
            return (group, sockets.withLock { $0 })
        } catch {
            for fd in sockets.withLock({ $0 }) where fd >= 0 { close(fd) }
            throw error
        }
    }

    /// Receiver side: one thread per accepted socket, each with its ring and channel.
    public static func serve(_ session: SessionInfo, sockets: [Int32], options: TransferOptions, abort: AbortSignal,
                             backend: IOBackendKind, warn: @escaping @Sendable (String) -> Void) throws(TransferError) -> WorkerGroup<Channel> {
        let guards = sockets.map { abort.watch($0) }
        return try WorkerGroup<Channel>(count: session.channelCount, abort: abort) { (i) throws(TransferError) in
            let ring: Ring
            do { ring = try Ring(entries: 16, backend: backend) } catch {
                throw TransferError(.localIO, "cannot create an I/O ring: \(error)")
            }
            let ch = Channel(index: i, fd: sockets[i], ring: ring, chunkSize: session.chunkSize, compression: false,
                             acceleration: 1, timeout: options.timeout, warn: i == 0 ? warn : { _ in })
            ch.socketGuard = guards[i]
            return ch
        }
    }
}
