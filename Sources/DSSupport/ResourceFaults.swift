import Glibc
import Synchronization

/// Failure injection for resource creation, for tests: makes thread starts (`OSThread`), the
/// library's large allocations (`AlignedMemory`: buffer pools, LZ4 states, TLS buffers, hash
/// states) or io_uring setups (`Ring`) fail on the calling thread and on every thread it starts,
/// transitively, while a `run` is in progress. Other threads (parallel tests) are not affected.
///
/// Production code never sets it; checking it costs one atomic load when nothing is injected.
package final class ResourceFaults: Sendable {
    /// `ring`: setting up an io_uring, which fails with ENOMEM when the rings of all of a user's
    /// processes outgrow RLIMIT_MEMLOCK.
    package enum Resource: Sendable { case thread, memory, ring }

    private let resource: Resource
    private let error: Errno
    /// Requests of `resource` that still succeed before the failures start.
    private let successesLeft: Atomic<Int>

    /// - Parameters:
    ///   - resource: what fails.
    ///   - after: how many requests succeed first; every later one fails.
    ///   - error: the error the failing requests get.
    package init(_ resource: Resource, after: Int = 0, error: Errno? = nil) {
        self.resource = resource
        self.error = error ?? (resource == .thread ? .wouldBlock : .noMemory)
        successesLeft = Atomic(after)
    }

    /// Runs `body` with these faults on this thread (and the threads it starts).
    package func run<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        let previous = Self.current
        Self.install(self)
        defer { if let previous { Self.install(previous) } else { Self.uninstall() } }
        return try body()
    }

    private func take(_ r: Resource) -> Errno? {
        guard r == resource else { return nil }
        return successesLeft.subtract(1, ordering: .relaxed).newValue < 0 ? error : nil
    }

    // MARK: The per-thread table

    private static let table = Mutex<[UInt: ResourceFaults]>([:])
    private static let installed = Atomic<Int>(0)

    /// The faults of the calling thread, if any.
    package static var current: ResourceFaults? {
        guard installed.load(ordering: .acquiring) > 0 else { return nil }
        let me = UInt(pthread_self())
        return table.withLock { $0[me] }
    }

    /// The injected error for a request of `r` on this thread; nil: go ahead.
    package static func injected(_ r: Resource) -> Errno? { current?.take(r) }

    static func install(_ f: ResourceFaults) {
        let me = UInt(pthread_self())
        table.withLock { t in
            if t.updateValue(f, forKey: me) == nil { installed.add(1, ordering: .releasing) }
        }
    }

    static func uninstall() {
        let me = UInt(pthread_self())
        table.withLock { t in
            if t.removeValue(forKey: me) != nil { installed.subtract(1, ordering: .releasing) }
        }
    }
}

/// Page- (or otherwise) aligned memory from `posix_memalign`, for the library's large, long-lived
/// buffers. Unlike Swift's allocators, which trap when memory runs out, this throws, so a VMM
/// embedding the library sees an error instead of losing its guest. Free with `free(_:)`.
package enum AlignedMemory {
    /// `byteCount` bytes aligned to `alignment` (a power of two, at least the pointer size).
    /// - Throws: ENOMEM (also for a size that overflows), or EINVAL for a bad alignment.
    package static func allocate(byteCount: Int, alignment: Int) throws(Errno) -> UnsafeMutableRawPointer {
        if let e = ResourceFaults.injected(.memory) { throw e }
        guard byteCount >= 0 else { throw .noMemory }
        var p: UnsafeMutableRawPointer?
        let rc = posix_memalign(&p, alignment, max(byteCount, 1))
        guard rc == 0, let p else { throw Errno(rawValue: rc == 0 ? ENOMEM : rc) }
        return p
    }

    package static func free(_ p: UnsafeMutableRawPointer) { Glibc.free(p) }
}
