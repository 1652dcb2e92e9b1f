// The emulated VFIO device's migration stream: the record format, the saving side that turns the
// state and its dirty pages into records, and the loading side that checks and applies them.
// The format is described on `EmulatedVFIODevice`.

import DSDevices
import DSSupport

/// The record format's constants.
enum EmulatedStream {
    /// `[kind u8][offset u64][length u32]`.
    static let recordHeaderSize = 13
    static let maxPayload = 64 * 1024
    static let headerPayload = 20
    static let trailerPayload = 24
    static let kindHeader: UInt8 = 0x48  // 'H'
    static let kindData: UInt8 = 0x44    // 'D'
    static let kindTrailer: UInt8 = 0x54 // 'T'
    static let magic: UInt64 = 0x4D45_4F49_4646_5344  // "DSVFIOEM" little-endian
    static let version: UInt32 = 1
    static let pageSize: UInt64 = 4096

    static var headerRecordSize: UInt64 { UInt64(recordHeaderSize + headerPayload) }
    static var trailerRecordSize: UInt64 { UInt64(recordHeaderSize + trailerPayload) }

    /// Bytes of `bytes` of state sent as data records of at most `maxPayload`.
    static func dataRecordsSize(_ bytes: UInt64) -> UInt64 {
        bytes + (bytes + UInt64(maxPayload) - 1) / UInt64(maxPayload) * UInt64(recordHeaderSize)
    }

    /// The stream of a whole `size`-byte state with nothing dirtied: header, data, trailer.
    static func wholeStreamSize(_ size: UInt64) -> UInt64 {
        headerRecordSize + dataRecordsSize(size) + trailerRecordSize
    }
}

/// The saving side: the header, the whole state as 64 KiB records (the initial bytes), then each
/// page the workload dirtied as a 4 KiB record read from the state when it is emitted (its bit was
/// cleared first, so a later write makes it dirty again), and in STOP_COPY the trailer.
/// Not thread-safe: the device's lock guards it.
final class EmulatedStreamSaver {
    private let memory: UnsafeMutableRawPointer
    private let size: UInt64
    private let bitmap: AtomicBitmap
    private var headerSent = false
    private var initialCursor: UInt64 = 0
    private var pending: [UInt8] = []
    private var pendingPos = 0
    private var pendingIsInitial = false
    private var dirtyQueue: [UInt64] = []
    private var trailerSent = false
    private var records: UInt64 = 0
    private let hash: XXH3Stream

    init(memory: UnsafeMutableRawPointer, size: UInt64, bitmap: AtomicBitmap, hash: XXH3Stream) {
        self.memory = memory
        self.size = size
        self.bitmap = bitmap
        self.hash = hash
    }

    /// Starts a new stream (entering PRE_COPY, or STOP_COPY without pre-copy).
    func start() {
        headerSent = false
        initialCursor = 0
        pending.removeAll(keepingCapacity: true)
        pendingPos = 0
        pendingIsInitial = false
        dirtyQueue.removeAll()
        trailerSent = false
        records = 0
        hash.reset()
        bitmap.clearAll()
    }

    /// Fills as much of `buffer` as it can, continuing a partly read record; 0 when nothing is
    /// available now (PRE_COPY) or at the end of the stream (`final`: STOP_COPY, after the trailer).
    func read(into buffer: UnsafeMutableRawBufferPointer, final: Bool) -> Int {
        guard let out = buffer.baseAddress else { return 0 }
        var written = 0
        while written < buffer.count {
            if pendingPos < pending.count {
                let n = min(buffer.count - written, pending.count - pendingPos)
                pending.withUnsafeBytes { (out + written).copyMemory(from: $0.baseAddress! + pendingPos, byteCount: n) }
                pendingPos += n
                written += n
                continue
            }
            if !produceRecord(final: final) { break }
        }
        return written
    }

    /// Bytes of the initial state still to be read (records included).
    var initialRemaining: UInt64 {
        var bytes = EmulatedStream.dataRecordsSize(size - initialCursor)
        if !headerSent { bytes += EmulatedStream.headerRecordSize }
        if pendingIsInitial { bytes += UInt64(pending.count - pendingPos) }
        return bytes
    }

    /// Bytes of dirty records known now (a dirty page is one 4 KiB record).
    var dirtyRemaining: UInt64 {
        var bytes = UInt64(bitmap.popcount + dirtyQueue.count) * (EmulatedStream.pageSize + UInt64(EmulatedStream.recordHeaderSize))
        if !pendingIsInitial { bytes += UInt64(pending.count - pendingPos) }
        return bytes
    }

    /// What the stream still holds, the trailer included.
    var remaining: UInt64 {
        initialRemaining + dirtyRemaining + (trailerSent ? 0 : EmulatedStream.trailerRecordSize)
    }

    private func beginRecord(kind: UInt8, offset: UInt64, length: Int) {
        pending.removeAll(keepingCapacity: true)
        pendingPos = 0
        pending.append(kind)
        pending.appendLE(offset)
        pending.appendLE(UInt32(length))
    }

    private func finishRecord() {
        hash.update(pending)
        records += 1
    }

    private func emitData(offset: UInt64, length: Int) {
        beginRecord(kind: EmulatedStream.kindData, offset: offset, length: length)
        pending.append(contentsOf: UnsafeRawBufferPointer(start: memory + Int(offset), count: length))
        finishRecord()
    }

    /// Puts the next record in `pending`; false when there is none now.
    private func produceRecord(final: Bool) -> Bool {
        if !headerSent {
            beginRecord(kind: EmulatedStream.kindHeader, offset: 0, length: EmulatedStream.headerPayload)
            pending.appendLE(EmulatedStream.magic)
            pending.appendLE(EmulatedStream.version)
            pending.appendLE(size)
            finishRecord()
            headerSent = true
            pendingIsInitial = true
            return true
        }
        if initialCursor < size {
            let n = Int(min(UInt64(EmulatedStream.maxPayload), size - initialCursor))
            emitData(offset: initialCursor, length: n)
            initialCursor += UInt64(n)
            pendingIsInitial = true
            return true
        }
        if dirtyQueue.isEmpty {
            for i in 0 ..< bitmap.wordCount {
                var w = bitmap.takeWord(i)
                while w != 0 {
                    dirtyQueue.append(UInt64(i * 64 + w.trailingZeroBitCount))
                    w &= w - 1
                }
                if !dirtyQueue.isEmpty { dirtyQueue.reverse(); break }
            }
        }
        if let page = dirtyQueue.popLast() {
            let offset = page * EmulatedStream.pageSize
            emitData(offset: offset, length: Int(min(EmulatedStream.pageSize, size - offset)))
            pendingIsInitial = false
            return true
        }
        if final && !trailerSent {
            let streamDigest = hash.digest
            let count = records
            beginRecord(kind: EmulatedStream.kindTrailer, offset: 0, length: EmulatedStream.trailerPayload)
            pending.appendLE(xxh3(memory, Int(size)))
            pending.appendLE(streamDigest)
            pending.appendLE(count)
            trailerSent = true
            pendingIsInitial = false
            return true
        }
        return false
    }
}

/// The loading side: takes the stream in order, split anywhere; each record header is checked
/// against bounds before its payload is accepted, and any fault is `.malformedStream` naming the
/// stream offset. After a fault, later writes repeat the error. `finish` (leaving RESUMING)
/// checks that the trailer arrived and that the state matches its digest.
/// Not thread-safe: the device's lock guards it.
final class EmulatedStreamLoader {
    private let memory: UnsafeMutableRawPointer
    private let size: UInt64
    private var rec: [UInt8] = []
    private var recLength = 0
    private var recStart: UInt64 = 0
    private var offset: UInt64 = 0
    private var records: UInt64 = 0
    private var trailerReceived = false
    private var expectedDigest: UInt64 = 0
    private var parseError: DeviceError?
    private let hash: XXH3Stream

    init(memory: UnsafeMutableRawPointer, size: UInt64, hash: XXH3Stream) {
        self.memory = memory
        self.size = size
        self.hash = hash
    }

    /// Starts loading a new stream (entering RESUMING).
    func reset() {
        rec.removeAll(keepingCapacity: true)
        recLength = 0
        recStart = 0
        offset = 0
        records = 0
        trailerReceived = false
        expectedDigest = 0
        parseError = nil
        hash.reset()
    }

    private func malformed(_ what: String) -> DeviceError {
        DeviceError(.malformedStream, "vfio-emu device: malformed migration stream: \(what); the stream must come unchanged, in order, from a vfio-emu source of the same size")
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws(DeviceError) {
        if let parseError { throw parseError }
        do throws(DeviceError) {
            try parse(bytes)
        } catch {
            parseError = error
            throw error
        }
    }

    /// The stream must be complete and the state must match its digest.
    func finish() throws(DeviceError) {
        if let parseError { throw parseError }
        guard trailerReceived else {
            throw malformed("stream truncated: no trailer after \(offset) bytes (\(records) records); the source must be read until read() returns 0 in STOP_COPY and every byte written")
        }
        let actual = xxh3(memory, Int(size))
        guard actual == expectedDigest else {
            throw malformed("state digest mismatch: the trailer says xxh3 \(Hex.digest(expectedDigest)) but the loaded state hashes to \(Hex.digest(actual))")
        }
    }

    private func parse(_ bytes: UnsafeRawBufferPointer) throws(DeviceError) {
        let h = EmulatedStream.recordHeaderSize
        var i = 0
        while i < bytes.count {
            if trailerReceived {
                throw malformed("\(bytes.count - i) unexpected byte(s) after the trailer at stream offset \(offset)")
            }
            let need = rec.count < h ? h - rec.count : h + recLength - rec.count
            let n = min(need, bytes.count - i)
            if rec.count == 0 { recStart = offset }
            rec.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[i ..< i + n]))
            i += n
            offset += UInt64(n)
            if rec.count == h { try checkRecordHeader() }
            if rec.count > h && rec.count == h + recLength {
                try applyRecord()
                rec.removeAll(keepingCapacity: true)
            }
        }
    }

    private func checkRecordHeader() throws(DeviceError) {
        let kind = rec[0]
        let offset = rec.loadLE(at: 1, as: UInt64.self)
        let length = Int(rec.loadLE(at: 9, as: UInt32.self))
        if records == 0 && kind != EmulatedStream.kindHeader {
            throw malformed("the stream does not begin with a header record (found kind \(Hex.code(kind)) at stream offset \(recStart))")
        }
        if (kind == EmulatedStream.kindHeader || kind == EmulatedStream.kindTrailer) && offset != 0 {
            throw malformed("\(kind == EmulatedStream.kindHeader ? "header" : "trailer") record at stream offset \(recStart) has offset \(offset), expected 0")
        }
        switch kind {
        case EmulatedStream.kindHeader:
            guard records == 0 else { throw malformed("a second header record at stream offset \(recStart)") }
            guard length == EmulatedStream.headerPayload else {
                throw malformed("header record at stream offset \(recStart) has length \(length), expected \(EmulatedStream.headerPayload)")
            }
        case EmulatedStream.kindData:
            guard length >= 1 && length <= EmulatedStream.maxPayload else {
                throw malformed("data record at stream offset \(recStart) has length \(length), outside 1...\(EmulatedStream.maxPayload)")
            }
            guard offset <= size && UInt64(length) <= size - offset else {
                throw malformed("data record at stream offset \(recStart) covers \(offset)..<\(offset &+ UInt64(length)), beyond the state size \(size)")
            }
        case EmulatedStream.kindTrailer:
            guard length == EmulatedStream.trailerPayload else {
                throw malformed("trailer record at stream offset \(recStart) has length \(length), expected \(EmulatedStream.trailerPayload)")
            }
        default:
            throw malformed("unknown record kind \(Hex.code(kind)) at stream offset \(recStart); expected 0x48 (header), 0x44 (data) or 0x54 (trailer)")
        }
        recLength = length
    }

    private func applyRecord() throws(DeviceError) {
        let h = EmulatedStream.recordHeaderSize
        switch rec[0] {
        case EmulatedStream.kindHeader:
            guard rec.loadLE(at: h, as: UInt64.self) == EmulatedStream.magic else {
                throw malformed("bad magic in the header record at stream offset \(recStart + UInt64(h)); this is not a vfio-emu stream")
            }
            let version = rec.loadLE(at: h + 8, as: UInt32.self)
            guard version == EmulatedStream.version else {
                throw malformed("unsupported stream version \(version) at stream offset \(recStart + UInt64(h) + 8); this device reads version \(EmulatedStream.version)")
            }
            let streamSize = rec.loadLE(at: h + 12, as: UInt64.self)
            guard streamSize == size else {
                throw malformed("the stream is for a device of \(streamSize) bytes but this device has \(size) (header at stream offset \(recStart))")
            }
        case EmulatedStream.kindData:
            let at = rec.loadLE(at: 1, as: UInt64.self)
            rec.withUnsafeBytes { (memory + Int(at)).copyMemory(from: $0.baseAddress! + h, byteCount: recLength) }
        default:  // trailer (kinds were checked in checkRecordHeader)
            let count = rec.loadLE(at: h + 16, as: UInt64.self)
            guard count == records else {
                throw malformed("the trailer at stream offset \(recStart) counts \(count) records but \(records) arrived")
            }
            let streamDigest = rec.loadLE(at: h + 8, as: UInt64.self)
            guard streamDigest == hash.digest else {
                throw malformed("stream digest mismatch at the trailer (stream offset \(recStart)): the bytes before it were changed or reordered")
            }
            expectedDigest = rec.loadLE(at: h, as: UInt64.self)
            trailerReceived = true
            return
        }
        hash.update(rec)
        records += 1
    }
}
