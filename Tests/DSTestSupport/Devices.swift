// Helpers for the device tests (DSDevicesTests, DSSimulationTests).
import Glibc
import Testing
import DSDevices

/// Runs `body` and checks it throws a `DeviceError` with `code` (and a message containing `contains`).
@discardableResult
package func expectError(_ code: DeviceError.Code, _ contains: String? = nil,
                        sourceLocation: SourceLocation = #_sourceLocation,
                        _ body: () throws -> Void) -> DeviceError? {
    do {
        try body()
        Issue.record("expected a .\(code) DeviceError, got none", sourceLocation: sourceLocation)
        return nil
    } catch {
        guard let error = error as? DeviceError else {
            Issue.record("expected a DeviceError, got \(error)", sourceLocation: sourceLocation)
            return nil
        }
        #expect(error.code == code, "got .\(error.code): \(error.message)", sourceLocation: sourceLocation)
        if let contains {
            #expect(error.message.contains(contains), "message '\(error.message)' lacks '\(contains)'", sourceLocation: sourceLocation)
        }
        return error
    }
}

package func sleepMs(_ ms: Int) { usleep(useconds_t(ms * 1000)) }

/// Copies the given chunks from an addressable source to an addressable destination with pread/pwrite.
package func copyChunks(_ chunks: [UInt64], from src: any AddressableDevice, to dst: any AddressableDevice) throws -> Int {
    let sfd = try src.dataFD(for: .save)
    let dfd = try dst.dataFD(for: .load)
    let chunk = src.trackingChunkSize
    let buf = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 4096)
    defer { buf.deallocate() }
    var bytes = 0
    for c in chunks {
        let off = c * UInt64(chunk)
        let len = Int(min(UInt64(chunk), src.size - off))
        let n = pread(sfd, buf, len, off_t(off))
        #expect(n == len)
        let w = pwrite(dfd, buf, len, off_t(off))
        #expect(w == len)
        bytes += len
    }
    return bytes
}

/// Reads a stream device until `read` returns 0, with a buffer of `bufferSize` bytes.
package func drain(_ dev: any StreamDevice, bufferSize: Int) throws -> [UInt8] {
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: bufferSize)
    while true {
        let n = try buf.withUnsafeMutableBytes { (b) -> Int in try dev.read(into: b) }
        if n == 0 { return out }
        #expect(n <= bufferSize)
        out.append(contentsOf: buf[0 ..< n])
    }
}

/// A small seeded RNG for test splits.
package struct TestRNG {
    package var s: UInt64
    package init(_ seed: UInt64) { s = seed | 1 }
    package mutating func next() -> UInt64 { s ^= s >> 12; s ^= s << 25; s ^= s >> 27; return s &* 0x2545_F491_4F6C_DD1D }
    package mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}
