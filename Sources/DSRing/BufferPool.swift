import Glibc

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
public final class BufferPool {
    public let slotCount: Int
    public let slotSize: Int
    public let headroom: Int
    public let base: UnsafeMutableRawPointer
    private var owned: [Bool]
    private var free: [Int]

    /// - Parameters:
    ///   - slots: number of slots.
    ///   - payloadCapacity: payload bytes per slot.
    ///   - headroom: bytes in front of the payload (the frame header size).
    public init(slots: Int, payloadCapacity: Int, headroom: Int) {
        precondition(slots > 0 && payloadCapacity > 0 && headroom >= 0)
        let page = 4096
        slotSize = (payloadCapacity + headroom + page - 1) / page * page
        slotCount = slots
        self.headroom = headroom
        var p: UnsafeMutableRawPointer?
        let rc = posix_memalign(&p, page, slotSize * slots)
        precondition(rc == 0 && p != nil, "posix_memalign(\(slotSize * slots)) failed: \(rc)")
        base = p!
        owned = [Bool](repeating: false, count: slots)
        free = Array((0..<slots).reversed())
    }

    deinit { Glibc.free(base) }

    /// Takes a free slot; nil when every slot is owned.
    public func checkout() -> Int? {
        guard let i = free.popLast() else { return nil }
        owned[i] = true
        return i
    }

    /// Returns a slot. Traps if the slot is not checked out (returned twice).
    public func release(_ slot: Int) {
        precondition(owned[slot], "slot \(slot) released twice or never checked out")
        owned[slot] = false
        free.append(slot)
    }

    public var freeCount: Int { free.count }

    /// The whole slot: header room then payload.
    @inline(__always) public func bytes(_ slot: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: base + slot * slotSize, count: slotSize)
    }

    /// The payload area of a slot (after the header room).
    @inline(__always) public func payload(_ slot: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: base + slot * slotSize + headroom, count: slotSize - headroom)
    }

    /// The header room of a slot.
    @inline(__always) public func header(_ slot: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: base + slot * slotSize, count: headroom)
    }
}
