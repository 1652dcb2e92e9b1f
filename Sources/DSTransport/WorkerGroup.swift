import DSRing
import DSSupport

/// The first error of a session, and the connections to shut down when it happens so that every
/// other thread blocked on one of them returns at once.
package final class AbortSignal: @unchecked Sendable {
    // @unchecked: all state is guarded by `lock`.
    private let lock = ConditionLock()
    private var first: TransferError?
    private var connections: [Connection] = []
    private var wakers: [@Sendable () -> Void] = []
    /// Bytes to send (best effort, non-blocking) on every watched connection before shutting it
    /// down, so the peer learns why: an `error` frame.
    private let farewell: (@Sendable (TransferError) -> [UInt8])?

    package init(farewell: (@Sendable (TransferError) -> [UInt8])? = nil) { self.farewell = farewell }

    package var error: TransferError? { lock.withLock { first } }
    package var isAborted: Bool { error != nil }

    /// Adds a connection to tell and shut down on abort (and shuts it down now if already
    /// aborted). The farewell is skipped while its `socketGuard` says a frame is half sent.
    package func watch(_ connection: Connection) {
        let aborted = lock.withLock { () -> Bool in connections.append(connection); return first != nil }
        if aborted { connection.shutdown() }
    }

    /// Registers `wake`, called once on abort: it must wake threads waiting on conditions of
    /// their own (ordered-write turnstiles, round barriers) so they see the abort at once.
    /// Called immediately if the session has already aborted.
    package func onAbort(_ wake: @escaping @Sendable () -> Void) {
        let aborted = lock.withLock { () -> Bool in
            if first == nil { wakers.append(wake) }
            return first != nil
        }
        if aborted { wake() }
    }

    /// Records `error` if it is the first, then shuts every watched socket down.
    /// - Returns: true if this was the first error.
    @discardableResult
    package func abort(_ error: TransferError) -> Bool {
        let (isFirst, watched) = lock.withLock { () -> (Bool, [Connection]) in
            guard first == nil else { return (false, []) }
            first = error
            lock.broadcast()
            return (true, connections)
        }
        if isFirst, let farewell {
            let bytes = farewell(error)
            // Through the connection's funnel: encrypted on a TLS connection (plaintext would
            // break its stream), never waiting, never inside a half-sent frame.
            for c in watched { _ = try? c.send(bytes, timeout: .zero, mode: .bestEffort) }
        }
        for c in watched { c.shutdown() }
        if isFirst { for w in lock.withLock({ wakers }) { w() } }
        return isFirst
    }

    /// Records the first error without shutting sockets (the caller still wants to tell the
    /// peer why before closing).
    @discardableResult
    package func record(_ error: TransferError) -> Bool {
        let isFirst = lock.withLock { () -> Bool in
            guard first == nil else { return false }
            first = error
            lock.broadcast()
            return true
        }
        if isFirst { for w in lock.withLock({ wakers }) { w() } }
        return isFirst
    }

    /// Shuts every watched connection down.
    package func shutdownAll() {
        for c in lock.withLock({ connections }) { c.shutdown() }
    }
}

/// N long-lived threads, each owning a context made on it (a ring, a channel) that never moves.
///
/// Work is dispatched per transfer phase (connect, a round of chunks, end of stream), never per
/// chunk: `run` hands every thread the same job and waits for all of them. The first error
/// aborts the session (`AbortSignal`) and is what `run` throws.
package final class WorkerGroup<Context>: @unchecked Sendable {
    // @unchecked: `job`, `generation`, `pending`, `stopping` are guarded by `lock`; each
    // `Context` is created, used and destroyed on its own thread only.
    package typealias Job = (Int, Context) throws(TransferError) -> Void
    private let lock = ConditionLock()
    private var job: Job?
    private var target: Int?
    private var generation = 0
    private var pending = 0
    private var stopping = false
    private var threads: [OSThread] = []
    package let abort: AbortSignal
    package let count: Int

    /// Starts `count` threads, named `name-0`, `name-1`...; each makes its context with `make`
    /// on itself. If a thread cannot be started, or any `make` fails, the group is aborted, the
    /// threads already started are joined, and the error thrown.
    package init(count: Int, name: String, abort: AbortSignal,
                make: @escaping (Int) throws(TransferError) -> Context) throws(TransferError) {
        self.count = count
        self.abort = abort
        pending = count
        for i in 0..<count {
            do {
                threads.append(try OSThread(name: "\(name)-\(i)") { [self] in self.threadMain(i, make) })
            } catch {
                abort.abort(.threadStart(error, "\(name)-\(i)", doing: "channel \(i) of \(count)"))
                // The threads never started will not count themselves down.
                lock.withLock { pending -= count - i; lock.broadcast() }
                break
            }
        }
        // Wait for every context to be made.
        lock.withLock { _ = lock.wait(until: { pending == 0 }, timeout: nil) }
        if let e = abort.error {
            shutdown()
            throw e
        }
    }

    private func threadMain(_ i: Int, _ make: (Int) throws(TransferError) -> Context) {
        var context: Context?
        do { context = try make(i) } catch { abort.abort(error) }
        var seen = 0
        lock.withLock { pending -= 1; lock.broadcast() }
        while true {
            var work: Job?
            lock.withLock {
                _ = lock.wait(until: { stopping || generation != seen }, timeout: nil)
                if !stopping {
                    seen = generation
                    if target == nil || target == i { work = job }
                }
            }
            if lock.withLock({ stopping }) { break }
            if let work, let ctx = context, !abort.isAborted {
                do { try work(i, ctx) } catch { abort.abort(error) }
            }
            lock.withLock { pending -= 1; lock.broadcast() }
        }
        context = nil  // destroyed on its own thread
    }

    /// Runs `job` on every thread (or only on `only`) and waits for all of them.
    package func run(only: Int? = nil, _ job: @escaping Job) throws(TransferError) {
        if let e = abort.error { throw e }
        lock.withLock {
            self.job = job
            target = only
            pending = count
            generation += 1
            lock.broadcast()
            _ = lock.wait(until: { pending == 0 }, timeout: nil)
            self.job = nil
        }
        if let e = abort.error { throw e }
    }

    /// Stops and joins the threads. Idempotent.
    package func shutdown() {
        let ts = lock.withLock { () -> [OSThread] in
            stopping = true
            lock.broadcast()
            defer { threads = [] }
            return threads
        }
        for t in ts { t.join() }
    }

    deinit { shutdown() }
}
