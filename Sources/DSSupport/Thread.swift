import Glibc

/// A joinable OS thread. Rings live on these: a request dies with its submitting thread, so
/// they are never run on the cooperative pool.
public final class OSThread: @unchecked Sendable {
    // @unchecked: `tid` is written once by pthread_create before any other access; `body` is
    // immutable.
    private var tid = pthread_t()
    private let body: () -> Void

    public init(_ body: @escaping () -> Void) {
        self.body = body
        let ctx = Unmanaged.passRetained(self).toOpaque()
        let rc = pthread_create(&tid, nil, { p in
            let me = Unmanaged<OSThread>.fromOpaque(p!).takeRetainedValue()
            me.body()
            return nil
        }, ctx)
        precondition(rc == 0, "pthread_create failed: \(rc)")
    }

    public func join() { pthread_join(tid, nil) }
}
