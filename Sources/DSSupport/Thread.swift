import Glibc

/// A joinable OS thread. Rings live on these: a request dies with its submitting thread, so
/// they are never run on the cooperative pool.
///
/// Every thread the library starts has a name of the form `ds-…` (`ds-send-3`, `ds-feedback`),
/// so an embedder sees them in `top -H` and in a debugger.
package final class OSThread: @unchecked Sendable {
    // @unchecked: `tid` is written once by pthread_create before any other access; `body`,
    // `name` and `faults` are immutable.
    private var tid = pthread_t()
    private let body: () -> Void
    /// The thread's name as the kernel shows it (at most 15 bytes: longer names are cut).
    package let name: String
    /// The creating thread's injected resource faults (tests), inherited by this thread.
    private let faults: ResourceFaults?

    /// Starts a thread named `name` running `body`.
    /// - Parameters:
    ///   - name: shown by `top -H`, `ps -L` and debuggers; cut to 15 bytes (the kernel's limit).
    ///   - body: runs on the new thread; `join()` waits for it to return.
    /// - Throws: the error `pthread_create` returned (EAGAIN when the process or the system is
    ///   out of threads, ENOMEM), never a trap. The body has not run then.
    /// The corresponding C function is `pthread_create`, then `pthread_setname_np` on the thread.
    package init(name: String, _ body: @escaping () -> Void) throws(Errno) {
        self.name = Self.kernelName(name)
        self.body = body
        faults = ResourceFaults.current
        if let e = ResourceFaults.injected(.thread) { throw e }
        let ctx = Unmanaged.passRetained(self)
        let rc = pthread_create(&tid, nil, { p in
            let me = Unmanaged<OSThread>.fromOpaque(p!).takeRetainedValue()
            if let setName = OSThread.setName { _ = me.name.withCString { setName(pthread_self(), $0) } }
            if let f = me.faults {
                ResourceFaults.install(f)
                me.body()
                ResourceFaults.uninstall()
            } else {
                me.body()
            }
            return nil
        }, ctx.toOpaque())
        guard rc == 0 else {
            ctx.release()  // the thread never started: the reference it was to take is ours to drop
            throw Errno(rawValue: rc)
        }
    }

    package func join() { pthread_join(tid, nil) }

    /// Lets the thread end on its own (no `join` will follow); its resources go when it returns.
    package func detach() { pthread_detach(tid) }

    /// glibc's `pthread_setname_np`, which Swift's Glibc module does not declare (it needs
    /// `_GNU_SOURCE`); looked up once. Naming is best effort: nil leaves threads unnamed.
    private static let setName: (@convention(c) (pthread_t, UnsafePointer<CChar>) -> Int32)? = {
        guard let sym = dlsym(nil, "pthread_setname_np") else { return nil }
        return unsafeBitCast(sym, to: (@convention(c) (pthread_t, UnsafePointer<CChar>) -> Int32).self)
    }()

    /// `name` cut to the kernel's 15 bytes (TASK_COMM_LEN - 1), on a character boundary.
    static func kernelName(_ name: String) -> String {
        var out = ""
        for c in name {
            if out.utf8.count + String(c).utf8.count > 15 { break }
            out.append(c)
        }
        return out
    }
}
