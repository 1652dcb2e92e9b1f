// Shared by the fuzz targets. DSWire, DSCodec and DSSupport are not products of the main package;
// their modules are built as dependencies of the DeviceStream product, and only their public
// declarations are visible here.
import DSWire

/// A cursor over the fuzz input: fixed-size fields first, then the rest.
/// A field past the end reads as zeros, so every input is usable.
public struct FuzzInput {
    public let bytes: UnsafeRawBufferPointer
    public private(set) var position = 0

    public init(_ data: UnsafePointer<UInt8>?, _ size: Int) {
        bytes = UnsafeRawBufferPointer(start: size == 0 ? nil : data, count: size)
    }

    public var remaining: Int { bytes.count - position }

    public mutating func u8() -> UInt8 {
        guard position < bytes.count else { return 0 }
        defer { position += 1 }
        return bytes[position]
    }

    /// A little-endian integer of `T`'s width (zero-filled past the end).
    public mutating func integer<T: FixedWidthInteger & UnsignedInteger>(_: T.Type) -> T {
        var v: T = 0
        for i in 0..<MemoryLayout<T>.size { v |= T(u8()) << (8 * i) }
        return v
    }

    /// What is left, as its own buffer (the fuzzer's own allocation: reading past it is an
    /// AddressSanitizer report).
    public mutating func rest() -> UnsafeRawBufferPointer {
        defer { position = bytes.count }
        return position >= bytes.count
            ? UnsafeRawBufferPointer(start: nil, count: 0) : UnsafeRawBufferPointer(rebasing: bytes[position...])
    }

    public mutating func restArray() -> [UInt8] { Array(rest()) }
}

/// Traps, with a message libFuzzer prints, when an invariant the decoder promises does not hold.
@inline(never)
public func require(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
                    file: StaticString = #fileID, line: UInt = #line) {
    if !condition() { fatalError("fuzz invariant violated: \(message())", file: file, line: line) }
}

/// The control payloads, by the decoder that reads them. The frame-header target picks one from
/// the frame type and the session mode, the payloads target from its first byte.
public enum ControlPayload: UInt8, CaseIterable, Sendable {
    case channelEnd, transferTotals, errorMessage, deviceHeader, deviceTotals, setupAccept, loadStats,
         loaded, resumed, deviceDigests, migrationSummary

    /// The decoder a receiver runs for a control frame of `type` (migration: a migration session,
    /// where `ack` and `endOfStream` carry digests and the summary instead of transfer totals).
    public static func forFrame(_ type: FrameType, migration: Bool) -> ControlPayload? {
        switch type {
        case .channelEnd: .channelEnd
        case .endOfStream: migration ? .migrationSummary : .transferTotals
        case .ack: migration ? .deviceDigests : .transferTotals
        case .error, .reject: .errorMessage
        case .accept: migration ? .setupAccept : nil
        case .deviceSection: .deviceHeader
        case .endOfState, .initDataSent: .deviceTotals
        case .loadStats: .loadStats
        case .loaded: .loaded
        case .resumed: .resumed
        default: nil
        }
    }
}

/// Runs the decoder for `kind` on `payload`. A decoder either throws a `WireError` or returns a
/// value that re-encodes to bytes it decodes to the same value (strings from the peer are
/// escaped on the way in, so for them the re-decoded value is only required to exist).
public func decodeControl(_ kind: ControlPayload, _ payload: [UInt8], channels: Int) {
    do throws(WireError) {
        switch kind {
        case .channelEnd:
            let v = try ChannelEnd.decode(payload)
            let again = try ChannelEnd.decode(v.encoded())
            require(again == v, "ChannelEnd round trip")
        case .transferTotals:
            let v = try TransferTotals.decode(payload)
            let again = try TransferTotals.decode(v.encoded())
            require(again == v, "TransferTotals round trip")
        case .errorMessage:
            let v = try ErrorMessage.decode(payload)
            require(isEscapedPeerText(v.message), "ErrorMessage kept a control character or is too long: \(v.message.debugDescription)")
            let again = try ErrorMessage.decode(v.encoded())
            require(again.code == v.code, "ErrorMessage code round trip")
        case .deviceHeader:
            let v = try DeviceHeader.decode(payload)
            require(v.size <= UInt64(Int64.max), "DeviceHeader size over Int64.max")
            require(isEscapedPeerText(v.spec), "DeviceHeader spec kept a control character or is too long: \(v.spec.debugDescription)")
        case .deviceTotals:
            let v = try DeviceTotals.decode(payload, channels: channels)
            require(v.chunksPerChannel.count == channels, "DeviceTotals channel count")
            let again = try DeviceTotals.decode(v.encoded(), channels: channels)
            require(again == v, "DeviceTotals round trip")
        case .setupAccept:
            let v = try SetupAccept.decodeIfPresent(payload)
            require(v == nil ? payload.isEmpty : !payload.isEmpty, "SetupAccept presence")
            if let v {
                let again = try SetupAccept.decodeIfPresent(v.encoded())
                require(again.map { sameBits($0.setupMilliseconds, v.setupMilliseconds)
                    && sameBits($0.resumeEstimateMilliseconds, v.resumeEstimateMilliseconds) } == true, "SetupAccept round trip")
            }
        case .loadStats:
            let v = try LoadStats.decode(payload)
            let again = try LoadStats.decode(v.encoded())
            require(sameBits(again.loadedBytes, v.loadedBytes) && sameBits(again.bytesPerSecond, v.bytesPerSecond), "LoadStats round trip")
            if let r = v.rateSample { require(r.isFinite && r > 0, "LoadStats rate sample \(r)") }
        case .loaded:
            let v = try Loaded.decode(payload)
            let again = try Loaded.decode(v.encoded())
            require(sameBits(again.loadMilliseconds, v.loadMilliseconds) && sameBits(again.validateMilliseconds, v.validateMilliseconds), "Loaded round trip")
        case .resumed:
            let v = try Resumed.decode(payload)
            let again = try Resumed.decode(v.encoded())
            require(sameBits(again.commitToRunningMilliseconds, v.commitToRunningMilliseconds)
                && sameBits(again.resumeMilliseconds, v.resumeMilliseconds), "Resumed round trip")
        case .deviceDigests:
            let v = try DeviceDigests.decode(payload)
            require(v.digests.count <= WireLimits.maxDevices, "DeviceDigests count \(v.digests.count)")
            let again = try DeviceDigests.decode(v.encoded())
            require(again == v, "DeviceDigests round trip")
        case .migrationSummary:
            let v = try MigrationSummary.decode(payload)
            require(v.downtime >= .zero && v.downtimeLimit >= .zero && (v.expectedDowntime ?? .zero) >= .zero, "MigrationSummary negative duration")
            require(v.sourceDigests.count <= WireLimits.maxDevices, "MigrationSummary digest count")
            let again = try MigrationSummary.decode(v.encoded())
            require(again == v, "MigrationSummary round trip")
        }
    } catch {
        // A refusal is the expected outcome for most inputs; it must describe itself.
        require(!error.description.isEmpty, "empty WireError description")
    }
}

/// Equal bit patterns (a NaN from the peer round-trips as the same NaN).
@inlinable public func sameBits(_ a: Double, _ b: Double) -> Bool { a.bitPattern == b.bitPattern }

/// Text as `PeerText.escape` leaves it: no C0, DEL, C1, line/paragraph separator or bidi
/// control, and at most `PeerText.maxCharacters` escaped scalars (8 characters each at most) and
/// the ellipsis.
public func isEscapedPeerText(_ text: String) -> Bool {
    let scalars = text.unicodeScalars
    guard scalars.count <= PeerText.maxCharacters * 8 + 1 else { return false }
    return scalars.allSatisfy { s in
        let v = s.value
        return !(v < 0x20 || (v >= 0x7F && v < 0xA0) || v == 0x2028 || v == 0x2029 || (0x202A...0x202E).contains(v)
            || (0x2066...0x2069).contains(v))
    }
}

/// FNV-1a 64, the check of frame headers and preambles (DSWire keeps its own `package`), so a
/// target can make a mutated header's check right again.
public func fnv1a64(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
    return h
}
