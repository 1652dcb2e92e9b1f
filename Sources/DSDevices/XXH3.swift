internal import CXXHash
import DSSupport

/// XXH3-64 of a memory range: how every device digests its state.
package func xxh3(_ p: UnsafeRawPointer?, _ count: Int) -> UInt64 {
    devstream_xxh3_64bits(p, count)
}

/// A streaming XXH3-64 hasher (owns an `XXH3_state_t`); not thread-safe: its owner's lock guards it.
package final class XXH3Stream {
    private let state: OpaquePointer
    /// - Throws: ENOMEM when `XXH3_createState` returns NULL (never a trap).
    package init() throws(Errno) {
        if let e = ResourceFaults.injected(.memory) { throw e }
        guard let s = XXH3_createState() else { throw .noMemory }
        state = s
        reset()
    }
    deinit { XXH3_freeState(state) }
    package func reset() { _ = XXH3_64bits_reset(state) }
    package func update(_ p: UnsafeRawPointer?, _ count: Int) { _ = devstream_xxh3_update(state, p, count) }
    package func update(_ bytes: [UInt8]) { bytes.withUnsafeBytes { update($0.baseAddress, $0.count) } }
    package var digest: UInt64 { XXH3_64bits_digest(state) }
}
