import Glibc
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
    /// bytes, sorted, non-overlapping, and the lengths add up to the bytes the extents carry.
    public struct View {
        public let count: Int
        /// Where the extents' bytes begin in the payload.
        public let dataOffset: Int
        /// The bytes the extents carry.
        public let dataBytes: Int
        /// Where entry 0 is in the payload.
        private let entries: Int
        private let payload: UnsafeRawBufferPointer

        /// Calls `body` for each extent in order, with its bytes (no copy, no allocation).
        public func forEach(_ body: (_ offset: UInt64, _ bytes: UnsafeRawBufferPointer) throws -> Void) rethrows {
            var start = dataOffset
            for i in 0..<count {
                let at = entries + i * ExtentTable.entrySize
                let offset = payload.loadLE(at: at, as: UInt64.self)
                let length = Int(payload.loadLE(at: at + 8, as: UInt32.self))
                try body(offset, UnsafeRawBufferPointer(rebasing: payload[start..<start + length]))
                start += length
            }
        }

        init(count: Int, entries: Int, dataOffset: Int, dataBytes: Int, payload: UnsafeRawBufferPointer) {
            self.count = count; self.entries = entries; self.dataOffset = dataOffset; self.dataBytes = dataBytes
            self.payload = payload
        }
    }

    /// Validates the table at the front of `payload` for a device of `deviceSize` bytes.
    /// - Throws: `.malformed` naming what is wrong; nothing is written before this passes.
    public static func parse(_ payload: UnsafeRawBufferPointer, deviceSize: UInt64) throws(WireError) -> View {
        guard payload.count >= headerSize else { throw .truncatedPayload(needed: headerSize, remaining: payload.count) }
        let count = try readHeader(payload, at: 0, allowEmpty: false)
        let tableEnd = size(count: count)
        guard payload.count >= tableEnd else { throw .truncatedPayload(needed: tableEnd, remaining: payload.count) }
        try checkEntries(payload, at: headerSize, count: count, dataBytes: payload.count - tableEnd, deviceSize: deviceSize)
        return View(count: count, entries: headerSize, dataOffset: tableEnd, dataBytes: payload.count - tableEnd, payload: payload)
    }

    /// Validates a packed chunk (`packZeroPages`: the bytes, then the table, then its header) of
    /// a chunk of `chunkLength` bytes. No extent may be empty or reach past the chunk; together
    /// they carry exactly the bytes before the table. An empty table (an all-zero chunk) is
    /// allowed.
    /// - Throws: `.malformed` naming what is wrong; nothing is written before this passes.
    public static func parsePacked(_ payload: UnsafeRawBufferPointer, chunkLength: UInt64) throws(WireError) -> View {
        guard payload.count >= headerSize else { throw .truncatedPayload(needed: headerSize, remaining: payload.count) }
        let count = try readHeader(payload, at: payload.count - headerSize, allowEmpty: true)
        let table = size(count: count)
        guard payload.count >= table else { throw .truncatedPayload(needed: table, remaining: payload.count) }
        let dataBytes = payload.count - table
        try checkEntries(payload, at: dataBytes, count: count, dataBytes: dataBytes, deviceSize: chunkLength)
        return View(count: count, entries: dataBytes, dataOffset: 0, dataBytes: dataBytes, payload: payload)
    }

    /// The extent count of the header at `at`, after checking its bounds and reserved bytes.
    private static func readHeader(_ payload: UnsafeRawBufferPointer, at: Int, allowEmpty: Bool) throws(WireError) -> Int {
        let count = Int(payload.loadLE(at: at, as: UInt16.self))
        guard count >= (allowEmpty ? 0 : 1), count <= maxExtents else {
            throw .lengthOutOfBounds(field: "extent count", value: UInt64(count), limit: UInt64(maxExtents))
        }
        guard payload.loadLE(at: at + 2, as: UInt16.self) == 0 else { throw .malformed("extent table: nonzero reserved bytes") }
        return count
    }

    /// Checks `count` entries from `at`: none empty, each inside `deviceSize`, sorted, not
    /// overlapping, and their lengths adding up to exactly `dataBytes`.
    private static func checkEntries(_ payload: UnsafeRawBufferPointer, at: Int, count: Int, dataBytes: Int,
                                     deviceSize: UInt64) throws(WireError) {
        var total = 0
        var end: UInt64 = 0
        for i in 0..<count {
            let entry = at + i * entrySize
            let offset = payload.loadLE(at: entry, as: UInt64.self)
            let length = payload.loadLE(at: entry + 8, as: UInt32.self)
            guard length >= 1 else { throw .malformed("extent \(i) is empty") }
            guard offset <= deviceSize, UInt64(length) <= deviceSize - offset else {
                throw .malformed("extent \(i) (\(offset)+\(length)) lies outside the device's \(deviceSize) bytes")
            }
            guard i == 0 || offset >= end else {
                throw .malformed("extent \(i) at \(offset) overlaps or precedes the previous extent, which ends at \(end)")
            }
            end = offset + UInt64(length)
            total += Int(length)
            guard total <= dataBytes else { break }
        }
        guard total == dataBytes else {
            throw .malformed("the extents add up to \(total) bytes but the frame carries \(dataBytes)")
        }
    }

    // MARK: Chunks without their zero pages

    /// The unit `packZeroPages` leaves out.
    public static let page = 4096

    /// Whether `count` bytes (at most a page) at `p` are all zero: `memcmp` against a page of
    /// zeros (glibc's is vectorised and stops at the first non-zero byte, usually in the first
    /// word of a page that holds data).
    @inline(__always) public static func isZero(_ p: UnsafeRawPointer, _ count: Int) -> Bool {
        memcmp(p, zeroPage, count) == 0
    }

    /// Packs the chunk in `buffer[0 ..< length]` in place without its zero pages, for a `data`
    /// frame with `FrameFlags.zeroPages`; nil, the buffer untouched, when no whole 4 KiB page of
    /// it is zero. Returns the length of the packed chunk now at the front of `buffer`:
    ///
    /// ```
    /// the non-zero runs' bytes back to back · count × (u64 offset in the chunk · u32 length)
    /// · u16 count (0 ... maxExtents) · u16 reserved (0)
    /// ```
    ///
    /// The table goes last so that packing only moves runs toward the front, in place, with no
    /// second buffer and no allocation: one scan of the pages fills a zero map (one bit a page,
    /// on the stack), from which the runs are moved, then the table written. Only whole pages
    /// are left out; a last partial page always travels. Each page left out frees 4 KiB and
    /// each entry costs 12 bytes, so a packed chunk is always shorter than the chunk it came
    /// from.
    ///
    /// Why: `mixed` device memory is 30% zero pages. Compressing and hashing them, then
    /// decompressing and hashing them again, cost 0.07–0.10 of the 0.48–0.52 CPU-s per GiB that
    /// LZ4 and XXH3 take at both ends together (a C loop over the 1 GiB `mixed` image, the
    /// README's CPU section). QEMU's multifd leaves zero pages out of its packets the same way.
    public static func packZeroPages(_ buffer: UnsafeMutableRawBufferPointer, length: Int) -> Int? {
        guard let base = buffer.baseAddress, length >= page, length <= buffer.count else { return nil }
        let pages = length / page
        return withUnsafeTemporaryAllocation(of: UInt64.self, capacity: (pages + 63) / 64) { zero -> Int? in
            var any = false
            for w in 0..<zero.count { zero[w] = 0 }
            for i in 0..<pages where isZero(base + i * page, page) {
                zero[i >> 6] |= 1 << UInt64(i & 63)
                any = true
            }
            guard any else { return nil }
            func isZeroPage(_ i: Int) -> Bool { zero[i >> 6] & (1 << UInt64(i & 63)) != 0 }
            // Runs in chunk order; `body(start, end)` in bytes. The partial tail joins the last run.
            func forEachRun(_ body: (Int, Int) -> Void) {
                var i = 0
                while i < pages {
                    if isZeroPage(i) { i += 1; continue }
                    let start = i
                    while i < pages, !isZeroPage(i) { i += 1 }
                    body(start * page, i == pages ? length : i * page)
                }
                if pages * page < length, isZeroPage(pages - 1) { body(pages * page, length) }
            }
            var packed = 0, count = 0
            forEachRun { start, end in
                if packed != start { memmove(base + packed, base + start, end - start) }
                packed += end - start
                count += 1
            }
            var entry = packed
            forEachRun { start, end in
                buffer.storeLE(UInt64(start), at: entry)
                buffer.storeLE(UInt32(end - start), at: entry + 8)
                entry += entrySize
            }
            buffer.storeLE(UInt16(count), at: entry)
            buffer.storeLE(UInt16(0), at: entry + 2)
            return entry + headerSize
        }
    }
}

/// A page of zeros for `ExtentTable.isZero`, never written.
nonisolated(unsafe) private let zeroPage: UnsafeRawPointer = UnsafeRawPointer(calloc(1, ExtentTable.page)!)
