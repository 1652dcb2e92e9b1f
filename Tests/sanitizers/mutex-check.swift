// The check Tests/sanitize.sh runs before trusting swift-mutex-tsan.c: four threads bump a
// `Mutex`-guarded counter (correct code: ThreadSanitizer must stay silent with the shim, and
// reports a false race without it); with `race` as an argument every thread also writes a plain
// variable once before it takes the lock (a real race: it must still be reported with the shim).
import Synchronization
import Glibc

final class Box: @unchecked Sendable { var x = 0 }
let counter = Mutex<Int>(0)
let box = Box()
nonisolated(unsafe) var racy = CommandLine.arguments.contains("race")

var threads: [pthread_t] = []
for _ in 0..<4 {
    var t = pthread_t()
    pthread_create(&t, nil, { _ in
        if racy { box.x += 1 }
        for _ in 0..<20_000 { counter.withLock { $0 += 1 } }
        return nil
    }, nil)
    threads.append(t)
}
for t in threads { pthread_join(t, nil) }
let total = counter.withLock { $0 }
print(total)
exit(total == 80_000 ? 0 : 1)
