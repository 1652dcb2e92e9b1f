// The extent table of a `pages` frame (`ExtentTable.parse`, then `forEach`), as the destination
// reads it from a decoded payload before it writes anything.
//
// Input: [device size u64][payload ...]; the device size is any u64 (a DeviceHeader allows up to
// Int64.max; the parser must not trap on more). Promised when parse returns: every extent is
// non-empty, inside the device, sorted and not overlapping, its bytes lie inside the payload,
// and together they are exactly the bytes after the table.
import DSWire
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzExtentTable(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let deviceSize = input.integer(UInt64.self)
    let payload = input.rest()
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
