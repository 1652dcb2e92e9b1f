import Glibc
import DSSupport

/// A fixed pool of page-aligned slots, allocated once and registered with a ring once.
///
/// Memory use is bounded by the pool whatever the size of the transfer. Each slot has exactly
/// one owner at a time: `checkout()` hands out a free slot index, `release(_:)` returns it; a
/// slot released twice, or one never checked out, is a programmer error and traps.
///
/// A slot's memory is `headroom` bytes for a frame header followed by `payloadCapacity` bytes,
/// so a chunk read at `payload(slot)` can be sent together with its header as one contiguous
/// buffer — the raw (uncompressed) path sends straight from the read buffer with no copy.
/// - Warning: pointers from `bytes(_:)` are valid until the pool is deinitialised; do not use a
///   slot's memory after releasing it.
///
/// Allocation failure is an error (`init` throws), never a trap: the library may run inside a
/// VMM whose guest must outlive a failed migration.
package final class BufferPool {
    package let slotCount: Int
    package let slotSize: Int
    package let headroom: Int
    package let base: UnsafeMutableRawPointer
    private var owned: [Bool]
    private var free: [Int]

    /// - Parameters:
    ///   - slots: number of slots.
    ///   - payloadCapacity: payload bytes per slot.
    ///   - headroom: bytes in front of the payload (the frame header size).
    /// - Throws: ENOMEM when `posix_memalign` cannot give `byteCount` bytes (or the size
    ///   overflows).
    package init(slots: Int, payloadCapacity: Int, headroom: Int) throws(Errno) {
        precondition(slots > 0 && payloadCapacity > 0 && headroom >= 0)
        let page = 4096
        let (perSlot, o1) = payloadCapacity.addingReportingOverflow(headroom + page - 1)
        let (total, o2) = (perSlot / page * page).multipliedReportingOverflow(by: slots)
        guard !o1, !o2 else { throw .noMemory }
        slotSize = perSlot / page * page
        slotCount = slots
        self.headroom = headroom
        base = try AlignedMemory.allocate(byteCount: total, alignment: page)
        owned = [Bool](repeating: false, count: slots)
        free = Array((0..<slots).reversed())
    }

    deinit { AlignedMemory.free(base) }

    /// The pool's whole size in bytes (what `init` allocates).
    package var byteCount: Int { slotSize * slotCount }

    /// Takes a free slot; nil when every slot is owned.
    package func checkout() -> Int? {
        guard let i = free.popLast() else { return nil }
        owned[i] = true
        return i
    }

    /// Returns a slot. Traps if the slot is not checked out (returned twice).
    package func release(_ slot: Int) {
        precondition(owned[slot], "slot \(slot) released twice or never checked out")
        owned[slot] = false
        free.append(slot)
    }

    package var freeCount: Int { free.count }

    /// The whole slot: header room then payload.
    @inline(__always) package func bytes(_ slot: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: base + slot * slotSize, count: slotSize)
    }

    /// The payload area of a slot (after the header room).
    @inline(__always) package func payload(_ slot: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: base + slot * slotSize + headroom, count: slotSize - headroom)
    }

    /// The header room of a slot.
    @inline(__always) package func header(_ slot: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: base + slot * slotSize, count: headroom)
    }
}
