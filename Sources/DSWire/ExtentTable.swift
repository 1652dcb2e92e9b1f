import DSSupport

/// The extent table at the front of a `pages` frame's raw payload (WIRE.md, "Pages"):
///
/// ```
/// u16 count (1 ... maxExtents) · u16 reserved (0) · count × (u64 offset · u32 length)
/// then the extents' bytes, back to back, in table order
/// ```
///
/// Extents are sorted by offset, do not overlap, are at least one byte each, and their lengths
/// add up to exactly the bytes after the table. Like QEMU's multifd packets (an array of page
/// offsets, then the pages), only dirty pages travel: no clean gap is ever resent.
public enum ExtentTable {
    /// Bytes before the first extent entry.
    public static let headerSize = 4
    /// Bytes per extent entry.
    public static let entrySize = 12
    /// The most extents one frame may carry (a 16 MiB chunk of 4 KiB pages).
    public static let maxExtents = 4096

    /// The table's size for `count` extents.
    @inlinable public static func size(count: Int) -> Int { headerSize + count * entrySize }

    /// Writes the header for `count` extents at the front of `buffer`.
    public static func writeHeader(count: Int, into buffer: UnsafeMutableRawBufferPointer) {
        precondition(count >= 1 && count <= maxExtents && buffer.count >= size(count: count))
        buffer.storeLE(UInt16(count), at: 0)
        buffer.storeLE(UInt16(0), at: 2)
    }

    /// Writes entry `index` (offset, length).
    public static func writeEntry(_ index: Int, offset: UInt64, length: UInt32, into buffer: UnsafeMutableRawBufferPointer) {
        let at = headerSize + index * entrySize
        buffer.storeLE(offset, at: at)
        buffer.storeLE(length, at: at + 8)
    }

    /// A validated view of a received table: every entry is in bounds of a device of `deviceSize`
    /// bytes, sorted, non-overlapping, and the lengths add up to the payload after the table.
    public struct View {
        public let count: Int
        /// Where the extents' bytes begin in the payload.
        public let dataOffset: Int
        private let payload: UnsafeRawBufferPointer

        /// Calls `body` for each extent in order, with its bytes (no copy, no allocation).
        public func forEach(_ body: (_ offset: UInt64, _ bytes: UnsafeRawBufferPointer) throws -> Void) rethrows {
            var start = dataOffset
            for i in 0..<count {
                let at = ExtentTable.headerSize + i * ExtentTable.entrySize
                let offset = payload.loadLE(at: at, as: UInt64.self)
                let length = Int(payload.loadLE(at: at + 8, as: UInt32.self))
                try body(offset, UnsafeRawBufferPointer(rebasing: payload[start..<start + length]))
                start += length
            }
        }

        /// The bytes the extents carry.
        public var dataBytes: Int { payload.count - dataOffset }

        init(count: Int, dataOffset: Int, payload: UnsafeRawBufferPointer) {
            self.count = count; self.dataOffset = dataOffset; self.payload = payload
        }
    }

    /// Validates the table at the front of `payload` for a device of `deviceSize` bytes.
    /// - Throws: `.malformed` naming what is wrong; nothing is written before this passes.
    public static func parse(_ payload: UnsafeRawBufferPointer, deviceSize: UInt64) throws(WireError) -> View {
        guard payload.count >= headerSize else { throw .truncatedPayload(needed: headerSize, remaining: payload.count) }
        let count = Int(payload.loadLE(at: 0, as: UInt16.self))
        guard count >= 1, count <= maxExtents else {
            throw .lengthOutOfBounds(field: "extent count", value: UInt64(count), limit: UInt64(maxExtents))
        }
        guard payload.loadLE(at: 2, as: UInt16.self) == 0 else { throw .malformed("extent table: nonzero reserved bytes") }
        let tableEnd = size(count: count)
        guard payload.count >= tableEnd else { throw .truncatedPayload(needed: tableEnd, remaining: payload.count) }
        var total = 0
        var end: UInt64 = 0
        for i in 0..<count {
            let at = headerSize + i * entrySize
            let offset = payload.loadLE(at: at, as: UInt64.self)
            let length = payload.loadLE(at: at + 8, as: UInt32.self)
            guard length >= 1 else { throw .malformed("extent \(i) is empty") }
            guard offset <= deviceSize, UInt64(length) <= deviceSize - offset else {
                throw .malformed("extent \(i) (\(offset)+\(length)) lies outside the device's \(deviceSize) bytes")
            }
            guard i == 0 || offset >= end else {
                throw .malformed("extent \(i) at \(offset) overlaps or precedes the previous extent, which ends at \(end)")
            }
            end = offset + UInt64(length)
            total += Int(length)
            guard total <= payload.count - tableEnd else { break }
        }
        guard total == payload.count - tableEnd else {
            throw .malformed("the extents add up to \(total) bytes but the frame carries \(payload.count - tableEnd) after its table")
        }
        return View(count: count, dataOffset: tableEnd, payload: payload)
    }
}
