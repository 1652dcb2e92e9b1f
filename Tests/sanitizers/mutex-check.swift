// The check Tests/sanitize.sh runs before trusting swift-mutex-tsan.c: four threads bump a
// `Mutex`-guarded counter 20,000 times each. Correct code: ThreadSanitizer must stay silent with
// the shim (without it, it reports a false race). With `race` as an argument each thread also
// bumps a plain variable between its locked sections: a real race, which must still be reported
// with the shim (the shim adds the lock's own happens-before edges, nothing more).
import Synchronization
import Glibc

let counter = Mutex<Int>(0)
nonisolated(unsafe) let plain = UnsafeMutablePointer<Int>.allocate(capacity: 1)
plain.initialize(to: 0)
nonisolated(unsafe) var racy = CommandLine.arguments.contains("race")

var threads: [pthread_t] = []
for _ in 0..<4 {
    var t = pthread_t()
    pthread_create(&t, nil, { _ in
        for _ in 0..<20_000 {
            counter.withLock { $0 += 1 }
            if racy { plain.pointee += 1 }
        }
        return nil
    }, nil)
    threads.append(t)
}
for t in threads { pthread_join(t, nil) }
let total = counter.withLock { $0 }
print(total)
exit(total == 80_000 ? 0 : 1)
