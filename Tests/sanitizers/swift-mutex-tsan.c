/*
 * Teaches ThreadSanitizer how Swift's `Synchronization.Mutex` synchronizes on Linux.
 *
 * Why: `Mutex.withLock` inlines a fast path (a compare-exchange on the lock word, which
 * ThreadSanitizer sees as an acquire/release) but falls back, when the lock is contended, to
 * `_MutexHandle._lockSlow` / `_unlockSlow` in libswiftSynchronization.so, which is not
 * instrumented and hands the lock over inside the kernel (FUTEX_LOCK_PI / FUTEX_UNLOCK_PI).
 * ThreadSanitizer never sees that hand-over, so every contended `withLock` looks like a data
 * race on the value it guards. Proven on a 20-line program (four threads, `m.withLock { $0 += 1 }`):
 * a report every run, and the count is still exact. DeviceStream guards most of its shared state
 * with `Mutex`, so without this the suite reports dozens of such false races.
 *
 * What: this library, preloaded (LD_PRELOAD) into the TSan-built test processes by
 * Tests/sanitize.sh, interposes those three exported slow paths, calls the real ones, and tells
 * ThreadSanitizer what happened on the lock word's address: `__tsan_release` before a slow
 * unlock, `__tsan_acquire` after a slow lock (or a successful slow try-lock) — the same
 * happens-before edges the fast path already gives it, no more. A real race (an access outside
 * the lock) is still reported: checked with the same program plus one unguarded write.
 *
 * The tsan hooks are weak: in a process without ThreadSanitizer (swift-test itself, sh,
 * openssl, all of which inherit LD_PRELOAD) the calls are just forwarded.
 *
 * ABI: the methods take `self` (the handle, passed by address: it holds an `Atomic`) in the
 * Swift context register, which clang's `swiftcall` + `swift_context` express. The mangled
 * names are those of Swift 6.x's Synchronization module; Tests/sanitize.sh checks that they
 * are exported before relying on this.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

extern void __tsan_acquire(void *addr) __attribute__((weak));
extern void __tsan_release(void *addr) __attribute__((weak));

#define SWIFTCALL __attribute__((swiftcall))
#define SELF __attribute__((swift_context))

#define LOCK_SLOW "$s15Synchronization12_MutexHandleV9_lockSlowyys6UInt32VF"
#define UNLOCK_SLOW "$s15Synchronization12_MutexHandleV11_unlockSlowyyF"
#define TRYLOCK_SLOW "$s15Synchronization12_MutexHandleV12_tryLockSlowSbyF"

typedef SWIFTCALL void (*lock_fn)(uint32_t, void *SELF);
typedef SWIFTCALL void (*unlock_fn)(void *SELF);
typedef SWIFTCALL bool (*trylock_fn)(void *SELF);

SWIFTCALL void ds_lock_slow(uint32_t id, void *SELF self) __asm__(LOCK_SLOW);
SWIFTCALL void ds_unlock_slow(void *SELF self) __asm__(UNLOCK_SLOW);
SWIFTCALL bool ds_trylock_slow(void *SELF self) __asm__(TRYLOCK_SLOW);

static void *next(const char *name) {
    void *f = dlsym(RTLD_NEXT, name);
    if (!f) {
        fprintf(stderr, "swift-mutex-tsan: %s not found after this library: is libswiftSynchronization loaded?\n", name);
        abort();
    }
    return f;
}

/* Resolved on first use; a benign race (every thread stores the same pointer), kept out of
 * ThreadSanitizer's sight because this file is not instrumented. */
static lock_fn real_lock;
static unlock_fn real_unlock;
static trylock_fn real_trylock;

SWIFTCALL void ds_lock_slow(uint32_t id, void *SELF self) {
    if (!real_lock) real_lock = (lock_fn)next(LOCK_SLOW);
    real_lock(id, self);
    if (__tsan_acquire) __tsan_acquire(self);
}

SWIFTCALL void ds_unlock_slow(void *SELF self) {
    if (!real_unlock) real_unlock = (unlock_fn)next(UNLOCK_SLOW);
    if (__tsan_release) __tsan_release(self);
    real_unlock(self);
}

SWIFTCALL bool ds_trylock_slow(void *SELF self) {
    if (!real_trylock) real_trylock = (trylock_fn)next(TRYLOCK_SLOW);
    bool locked = real_trylock(self);
    if (locked && __tsan_acquire) __tsan_acquire(self);
    return locked;
}
