// The check Tests/sanitize.sh runs before trusting swift-mutex-tsan.c: four threads bump a
// `Mutex`-guarded counter (correct code: ThreadSanitizer must stay silent with the shim, and
// reports a false race without it); with `race` as an argument every thread also writes a plain
// variable before it takes the lock (a real race: it must still be reported with the shim).
import Synchronization
import Glibc

let counter = Mutex<Int>(0)
nonisolated(unsafe) let plain = UnsafeMutablePointer<Int>.allocate(capacity: 1)
plain.initialize(to: 0)
nonisolated(unsafe) var racy = CommandLine.arguments.contains("race")
/// The threads start together (a relaxed count: no happens-before of its own), so the lock is
/// contended and every racy write happens while the other threads are alive.
let started = Atomic<Int>(0)

var threads: [pthread_t] = []
for _ in 0..<4 {
    var t = pthread_t()
    pthread_create(&t, nil, { _ in
        started.add(1, ordering: .relaxed)
        while started.load(ordering: .relaxed) < 4 {}
        if racy { for _ in 0..<1000 { plain.pointee += 1 } }
        for _ in 0..<20_000 { counter.withLock { $0 += 1 } }
        return nil
    }, nil)
    threads.append(t)
}
for t in threads { pthread_join(t, nil) }
let total = counter.withLock { $0 }
print(total)
exit(total == 80_000 ? 0 : 1)
