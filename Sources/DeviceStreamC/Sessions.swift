import Glibc
import CDeviceStream
import DeviceStream
import DSSupport
import DSTransport
import DSDevices

/// Runs one session on its own thread ("ds-session") and hands its report to `wait`.
final class SessionRunner: @unchecked Sendable {
    // @unchecked: every field is guarded by `lock`; the thread is joined once, by the first
    // waiter (wait or free) that sees the report; any other waiter waits until it is joined.
    private let lock = ConditionLock()
    private var thread: OSThread?
    private var result: MigrationReport?
    private var started = false
    private var joining = false
    private var joined = false

    var isStarted: Bool { lock.withLock { started } }

    /// Starts `body` on a new thread; fails when a session was already started here.
    func start(_ body: @escaping @Sendable () -> MigrationReport) throws(TransferError) {
        let first = lock.withLock { () -> Bool in defer { started = true }; return !started }
        guard first else { throw TransferError(.usage, "a session handle runs one session; this one has started already") }
        do {
            let t = try OSThread(name: "ds-session") { [self] in
                let r = body()
                lock.withLock { result = r; lock.broadcast() }
            }
            lock.withLock { thread = t; lock.broadcast() }
        } catch {
            // Nothing runs: wait must not block forever on a session that never started.
            lock.withLock { started = false }
            throw TransferError(.localIO, "cannot start the session thread: \(error)", hint: "the process is out of threads or memory")
        }
    }

    /// The report once the session ended within `timeout` (nil: forever), its threads joined.
    func wait(timeout: Duration?) -> MigrationReport? {
        // The thread is stored by `start` after it began, so a session that ends at once may
        // publish its report first: wait for both, so that the thread is always joined here.
        let done = lock.withLock { lock.wait(until: { (result != nil && thread != nil) || joined }, timeout: timeout) }
        guard done else { return nil }
        let t = lock.withLock { () -> OSThread? in
            guard !joining else { return nil }
            joining = true
            return thread
        }
        if let t {
            t.join()
            lock.withLock { thread = nil; joined = true; lock.broadcast() }
        } else {
            // Another waiter is joining: "every library thread has been joined when wait returns".
            lock.withLock { _ = lock.wait(until: { joined }, timeout: nil) }
        }
        return lock.withLock { result }
    }

    var report: MigrationReport? { lock.withLock { result } }
}

/// `ds_source`.
final class SourceBox {
    let source: MigrationSource
    let runner = SessionRunner()
    init(_ source: MigrationSource) { self.source = source }
    deinit {
        if runner.isStarted {
            source.cancel()
            _ = runner.wait(timeout: nil)
        }
    }
}

/// `ds_dest`: the destination session is made when it listens or gets its sockets.
final class DestBox {
    // `session` is guarded by `lock`: ds_dest_cancel, _resume and _stats may run on other
    // threads while ds_dest_listen stores it.
    let devices: [any MigratableDevice]
    let options: OptionsBox
    private let lock = ConditionLock()
    private var session: MigrationDestination?
    let runner = SessionRunner()
    init(devices: [any MigratableDevice], options: OptionsBox) { self.devices = devices; self.options = options }
    deinit {
        if runner.isStarted {
            destination?.cancel()
            _ = runner.wait(timeout: nil)
        }
    }

    var destination: MigrationDestination? { lock.withLock { session } }

    /// Runs `d`, made with `warn: sink.warn`: that delivers every warning (the listener's too,
    /// which `run` never sees), so `run`'s own copies of them are dropped here.
    func begin(_ d: MigrationDestination, sink: EventSink) throws(TransferError) {
        d.resumeHold = options.resumeHold
        // Claimed under the lock: of two racing listen calls, one runs and the other fails.
        let claimed = lock.withLock { () -> Bool in
            guard session == nil else { return false }
            session = d
            return true
        }
        guard claimed else { throw TransferError(.usage, "this destination has its session already") }
        do {
            try runner.start {
                d.run(acceptTimeout: nil) { event in
                    if case .warning = event { return }
                    sink.send(event)
                }
            }
        } catch {
            // Nothing runs: let go of the listener (and any sockets it took) and allow a retry.
            d.listener.stop()
            lock.withLock { session = nil }
            throw error
        }
    }
}

/// Waits for a session and reports the C way: 0 completed, -1 failed (with `err`), 1 running.
func waitResult(_ runner: SessionRunner, _ timeoutNs: UInt64, _ err: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guard runner.isStarted else {
        fail(err, DS_ERR_STATE, "the session was never started", hint: "call connect, listen or attach_fds first")
        return -1
    }
    let timeout: Duration? = timeoutNs == UInt64.max ? nil : .nanoseconds(Int64(clamping: timeoutNs))
    guard let r = runner.wait(timeout: timeout) else { return 1 }
    if r.completed { return 0 }
    fail(err, r.error ?? TransferError(.remote, "the migration failed"))
    return -1
}
