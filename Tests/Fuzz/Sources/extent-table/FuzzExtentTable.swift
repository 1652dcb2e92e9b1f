// The extent table of a `pages` frame (`ExtentTable.parse`, then `forEach`), as the destination
// reads it from a decoded payload before it writes anything.
//
// Input: [device size u64][payload ...]; the device size is any u64 (a DeviceHeader allows up to
// Int64.max; the parser must not trap on more). Promised when parse returns: every extent is
// non-empty, inside the device, sorted and not overlapping, its bytes lie inside the payload,
// and together they are exactly the bytes after the table.
//
// The same payload is then read as a packed chunk (`ExtentTable.parsePacked`: a `data` frame
// without its zero pages, the table at the end) of a chunk of the device size, with the same
// promises about the bytes before the table, and packing then rebuilding a chunk made of the
// input must give the chunk back.
import DSWire
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzExtentTable(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let deviceSize = input.integer(UInt64.self)
    let payload = input.rest()
    checkPacked(payload, chunkLength: deviceSize)
    checkPackRoundTrip(payload)
    let table: ExtentTable.View
    do throws(WireError) {
        table = try ExtentTable.parse(payload, deviceSize: deviceSize)
    } catch {
        require(!error.description.isEmpty, "empty WireError description")
        return 0
    }
    require(table.count >= 1 && table.count <= ExtentTable.maxExtents, "extent count \(table.count)")
    require(table.dataOffset == ExtentTable.size(count: table.count), "data offset \(table.dataOffset)")
    require(table.dataBytes == payload.count - table.dataOffset, "data bytes \(table.dataBytes)")
    var seen = 0, total = 0
    var end: UInt64 = 0
    let base = payload.baseAddress!
    var cursor = base + table.dataOffset
    table.forEach { offset, bytes in
        require(bytes.count >= 1, "extent \(seen) is empty")
        require(offset <= deviceSize && UInt64(bytes.count) <= deviceSize - offset, "extent \(seen) outside the device")
        require(seen == 0 || offset >= end, "extent \(seen) overlaps or precedes the previous one")
        require(bytes.baseAddress! == UnsafeRawPointer(cursor), "extent \(seen)'s bytes are not next in the payload")
        require(bytes.baseAddress! + bytes.count <= base + payload.count, "extent \(seen) runs past the payload")
        // Touch every byte, as the scatter to the device does (ASan checks each access).
        var sum: UInt8 = 0
        for b in bytes { sum &+= b }
        _ = sum
        end = offset + UInt64(bytes.count)
        cursor += bytes.count
        total += bytes.count
        seen += 1
    }
    require(seen == table.count, "forEach visited \(seen) of \(table.count) extents")
    require(total == table.dataBytes, "extents add up to \(total), the payload carries \(table.dataBytes)")
    return 0
}

/// `parsePacked`'s promises: extents inside the chunk, sorted, not overlapping, non-empty, their
/// bytes back to back from the payload's start, adding up to the bytes before the table.
func checkPacked(_ payload: UnsafeRawBufferPointer, chunkLength: UInt64) {
    let table: ExtentTable.View
    do throws(WireError) {
        table = try ExtentTable.parsePacked(payload, chunkLength: chunkLength)
    } catch {
        require(!error.description.isEmpty, "empty WireError description")
        return
    }
    require(table.count <= ExtentTable.maxExtents, "packed extent count \(table.count)")
    require(table.dataOffset == 0 && table.dataBytes + ExtentTable.size(count: table.count) == payload.count,
            "packed data \(table.dataOffset)+\(table.dataBytes) of \(payload.count)")
    var end: UInt64 = 0, seen = 0, total = 0
    table.forEach { offset, bytes in
        require(bytes.count >= 1 && offset <= chunkLength && UInt64(bytes.count) <= chunkLength - offset, "packed extent \(seen) outside the chunk")
        require(seen == 0 || offset >= end, "packed extent \(seen) overlaps or precedes the previous one")
        require(bytes.baseAddress! == payload.baseAddress! + total, "packed extent \(seen)'s bytes are not next")
        end = offset + UInt64(bytes.count); total += bytes.count; seen += 1
    }
    require(total == table.dataBytes, "packed extents add up to \(total) of \(table.dataBytes)")
}

/// Packs a chunk made of the input's first 16 bytes (each a 4 KiB page: 0 a zero page, else a
/// page of that byte; the 17th byte × 16 adds a partial tail) and rebuilds it from the table.
func checkPackRoundTrip(_ payload: UnsafeRawBufferPointer) {
    // At most 16 pages (64 KiB): enough for every shape of run, small enough to stay fast.
    let pages = min(payload.count, 16), tail = payload.count > 16 ? Int(payload[16]) * 16 : 0
    let length = pages * ExtentTable.page + tail
    guard length > 0 else { return }
    var chunk = [UInt8](repeating: 0, count: WireLimits.compressBound(length))
    for p in 0..<pages where payload[p] != 0 {
        for i in p * ExtentTable.page..<(p + 1) * ExtentTable.page { chunk[i] = payload[p] }
    }
    for i in pages * ExtentTable.page..<length { chunk[i] = UInt8(truncatingIfNeeded: i) | 1 }
    let original = Array(chunk[0..<length])
    guard let n = chunk.withUnsafeMutableBytes({ ExtentTable.packZeroPages($0, length: length) }) else {
        require(!(0..<(length / ExtentTable.page)).contains { payload[$0] == 0 }, "a zero page but nothing packed")
        return
    }
    require(n < length, "packed \(n) bytes of a \(length)-byte chunk")
    var rebuilt = [UInt8](repeating: 0, count: length)
    chunk.withUnsafeBytes { all in
        let packed = UnsafeRawBufferPointer(rebasing: all[0..<n])
        do throws(WireError) {
            try ExtentTable.parsePacked(packed, chunkLength: UInt64(length)).forEach { offset, bytes in
                for (k, b) in bytes.enumerated() { rebuilt[Int(offset) + k] = b }
            }
        } catch {
            require(false, "a packed chunk was refused: \(error)")
        }
    }
    require(rebuilt == original, "the packed chunk does not rebuild the chunk")
}
