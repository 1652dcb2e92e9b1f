import DSSupport
/// Frame types. Values are stable: v1 peers reject a type they do not know.
///
/// Data moves in `data` (addressable: offset) and `streamData` (ordered: sequence number) frames.
/// Control frames carry a small payload (at most `WireLimits.maxControlPayload`). The migration
/// types (0x10 and up) follow QEMU's VFIO section markers so `devstream migrate` fits v1 without a
/// version break.
public enum FrameType: UInt8, Sendable, CaseIterable {
    // Point-to-point transfer.
    /// A chunk of addressable state; `position` is its byte offset.
    case data = 0x01
    /// A chunk of an ordered stream; `position` is its sequence number.
    case streamData = 0x02
    /// End of one channel's data: payload `ChannelEnd` (chunks and raw bytes on this channel).
    case channelEnd = 0x03
    /// End of the whole transfer, on channel 0 after every channelEnd: payload `TransferTotals`.
    case endOfStream = 0x04
    /// Receiver → sender: everything was written and synced; payload `TransferTotals` as received.
    case ack = 0x05
    /// Either direction: something failed; payload `ErrorMessage`. The sender of it closes next.
    case error = 0x06
    /// Receiver → sender, after a preamble: the channel joined the session.
    case accept = 0x07
    /// Receiver → sender, after a preamble: the channel may not join; payload `ErrorMessage`.
    case reject = 0x08
    /// Sender → receiver, between frames: "still here" while the sender's input pauses (empty
    /// payload). The receiver skips it; it only restarts the stall timeout.
    case keepalive = 0x09

    // Live migration (source → destination unless noted).
    /// A device's header (QEMU: setup state): id in `stream`, payload `DeviceHeader`.
    case deviceSection = 0x10
    /// A device's config state (QEMU: VFIO_MIG_FLAG_DEV_CONFIG_STATE); payload is the blob.
    case configState = 0x11
    /// End of a pre-copy iteration; `aux` = iteration number.
    case iterationMark = 0x12
    /// The source is switching over: devices are stopping (QEMU: complete pre-copy).
    case switchover = 0x13
    /// A device's state is complete (QEMU: VFIO_MIG_FLAG_END_OF_STATE); payload `DeviceTotals`.
    case endOfState = 0x14
    /// The source has sent a device's initial data (QEMU: VFIO_MIG_FLAG_DEV_INIT_DATA_SENT);
    /// payload `DeviceTotals`.
    case initDataSent = 0x15
    /// Destination → source: a device's initial data is loaded (switchover-ack).
    case switchoverAck = 0x16
    /// Destination → source: a round is loaded (`aux`); payload `LoadStats`.
    case loadStats = 0x17
    /// Destination → source: every device is RUNNING; payload `Resumed`.
    case resumed = 0x18
    /// Source → destination: round-trip probe; `position` carries the source's clock, which
    /// the `pong` echoes.
    case ping = 0x19
    /// Destination → source: the answer to a `ping`, `position` echoed.
    case pong = 0x1A
    /// Destination → source: every device's state is loaded and validated (RESUMING → STOP);
    /// the devices wait for `commit`. Payload `Loaded`.
    case loaded = 0x1B
    /// Source → destination: the source has given up its devices for good (it will not
    /// restart them); the destination may run its own. Only after `loaded`.
    case commit = 0x1C

    /// Destination ← source, migration: dirty pages of an addressable device (`stream` = device):
    /// an extent table and the extents' bytes packed back to back, one LZ4 block and one
    /// XXH3-64 over the whole raw payload (see `ExtentTable`); `position` = 0.
    case pages = 0x1D

    public var isData: Bool { self == .data || self == .streamData || self == .pages }
}

/// Frame flags.
public struct FrameFlags: OptionSet, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// The payload is one LZ4 block that decodes to `rawLength` bytes.
    public static let lz4 = FrameFlags(rawValue: 1 << 0)
    /// This data frame belongs to the stop-copy phase of a migration.
    public static let stopCopy = FrameFlags(rawValue: 1 << 1)
    /// This `data` frame leaves out its chunk's zero pages: the raw payload is a packed chunk
    /// (`ExtentTable.packZeroPages`: the non-zero runs back to back, then a trailing extent
    /// table); every byte of the chunk no extent covers is zero. Wire version 3.
    public static let zeroPages = FrameFlags(rawValue: 1 << 2)
    public static let known: FrameFlags = [.lz4, .stopCopy, .zeroPages]
}

/// The 40-byte frame header.
///
/// ```
///  0  type         1  FrameType
///  1  flags        1  FrameFlags
///  2  stream       2  device id within a migration (0 for a plain transfer)
///  4  raw length   4  bytes the payload decodes to
///  8  wire length  4  bytes of payload that follow the header
/// 12  aux          4  iteration number, ping id, ... (type-specific)
/// 16  position     8  byte offset (data) or sequence number (streamData)
/// 24  checksum     8  XXH3-64 of the raw (decoded) payload bytes
/// 32  reserved     4  zero
/// 36  header check 4  low 32 bits of FNV-1a 64 over bytes 0 ..< 36
/// ```
/// The header check is verified before any field is used, so a flipped byte in a length cannot
/// size a buffer; every length is then checked against its bound.
public struct FrameHeader: Equatable, Sendable {
    public static let size = 40

    public var type: FrameType
    public var flags: FrameFlags
    public var stream: UInt16
    public var rawLength: UInt32
    public var wireLength: UInt32
    public var aux: UInt32
    public var position: UInt64
    public var checksum: UInt64

    public init(type: FrameType, flags: FrameFlags = [], stream: UInt16 = 0, rawLength: UInt32, wireLength: UInt32,
                aux: UInt32 = 0, position: UInt64 = 0, checksum: UInt64 = 0) {
        self.type = type
        self.flags = flags
        self.stream = stream
        self.rawLength = rawLength
        self.wireLength = wireLength
        self.aux = aux
        self.position = position
        self.checksum = checksum
    }

    /// Writes the header into the first 40 bytes of `buffer`. Allocates nothing.
    @inlinable public func encode(into buffer: UnsafeMutableRawBufferPointer) {
        precondition(buffer.count >= Self.size)
        buffer[0] = type.rawValue
        buffer[1] = flags.rawValue
        buffer.storeLE(stream, at: 2)
        buffer.storeLE(rawLength, at: 4)
        buffer.storeLE(wireLength, at: 8)
        buffer.storeLE(aux, at: 12)
        buffer.storeLE(position, at: 16)
        buffer.storeLE(checksum, at: 24)
        buffer.storeLE(UInt32(0), at: 32)
        let check = UInt32(truncatingIfNeeded: fnv1a64(UnsafeRawBufferPointer(rebasing: buffer[0..<36])))
        buffer.storeLE(check, at: 36)
    }

    /// Decodes a header and checks everything that does not depend on the session: the header
    /// check, the type, the flags, and that the lengths agree with each other and with the
    /// absolute bounds. `FrameValidator` checks the session's own bounds.
    public static func decode(_ buffer: UnsafeRawBufferPointer) throws(WireError) -> FrameHeader {
        guard buffer.count >= size else { throw .truncatedPayload(needed: size, remaining: buffer.count) }
        let check = UInt32(truncatingIfNeeded: fnv1a64(UnsafeRawBufferPointer(rebasing: buffer[0..<36])))
        guard check == buffer.loadLE(at: 36, as: UInt32.self) else { throw .headerChecksumMismatch }
        guard let type = FrameType(rawValue: buffer[0]) else { throw .unknownFrameType(buffer[0]) }
        let flags = FrameFlags(rawValue: buffer[1])
        guard FrameFlags.known.isSuperset(of: flags) else { throw .unknownFlags(buffer[1]) }
        guard !flags.contains(.zeroPages) || type == .data else { throw .malformed("the zero-pages flag on a \(type) frame") }
        guard buffer.loadLE(at: 32, as: UInt32.self) == 0 else { throw .reservedNotZero("frame header bytes 32 ..< 36") }
        let header = FrameHeader(
            type: type, flags: flags, stream: buffer.loadLE(at: 2, as: UInt16.self),
            rawLength: buffer.loadLE(at: 4, as: UInt32.self), wireLength: buffer.loadLE(at: 8, as: UInt32.self),
            aux: buffer.loadLE(at: 12, as: UInt32.self), position: buffer.loadLE(at: 16, as: UInt64.self),
            checksum: buffer.loadLE(at: 24, as: UInt64.self))
        try header.checkLengths(maxChunk: WireLimits.maxChunkSize)
        return header
    }

    /// Checks the lengths against `maxChunk` (data) or the control bound, and against each other.
    public func checkLengths(maxChunk: Int) throws(WireError) {
        let compressed = flags.contains(.lz4)
        if type.isData {
            guard rawLength >= 1, Int(rawLength) <= maxChunk else {
                throw .lengthOutOfBounds(field: "raw length", value: UInt64(rawLength), limit: UInt64(maxChunk))
            }
            if compressed {
                guard wireLength >= 1, Int(wireLength) <= WireLimits.compressBound(Int(rawLength)) else {
                    throw .inconsistentLengths(raw: rawLength, wire: wireLength, compressed: true)
                }
            } else if wireLength != rawLength {
                throw .inconsistentLengths(raw: rawLength, wire: wireLength, compressed: false)
            }
        } else {
            guard !compressed, rawLength == wireLength else {
                throw .inconsistentLengths(raw: rawLength, wire: wireLength, compressed: compressed)
            }
            guard Int(wireLength) <= WireLimits.maxControlPayload else {
                throw .lengthOutOfBounds(field: "control payload", value: UInt64(wireLength),
                                         limit: UInt64(WireLimits.maxControlPayload))
            }
        }
    }
}
