// The one-shot XXH3-64 of every chunk checksum, with an AVX2 inner loop chosen at run time.
//
// Why: Debian builds libxxhash for baseline x86-64, so its XXH3 runs the SSE2 loop: about
// 21 GB/s on this machine's 1 MiB chunks in cache, against 64 GB/s for the AVX2 loop of the same
// header (a C loop, `gcc -O2` vs `gcc -O2 -mavx2`). Each end hashes every chunk once, and XXH3 was
// 8% of each end's CPU in a 1 GiB file-to-file transfer (README, "Where the CPU goes").
//
// How: xxhash.h is included with XXH_INLINE_ALL (its functions become static, under the
// XXH_INLINE_ prefix, so nothing clashes with libxxhash), XXH_DISPATCH_AVX2 (it defines its AVX2
// accumulate and scramble routines although this file is built for baseline x86-64) and
// XXH_TARGET_AVX2 (those routines carry the avx2 target attribute). One function with the same
// attribute runs xxhash's long-input loop with them; it is called only after
// __builtin_cpu_supports("avx2") said yes (which also checks that the kernel saves the AVX state).
// This is what xxhash's own xxh_x86dispatch.c does, which Debian does not ship. Inputs of at most
// XXH3_MIDSIZE_MAX (240) bytes take the scalar short-input path, as in XXH3_64bits. The result is
// the same XXH3-64 on either path; XXHashDispatchTests checks that, byte lengths 0 to 4100 and
// chunk sizes, at every alignment of the input.
//
// Not an unsafe flag: nothing here needs -mavx2, so a package that depends on DeviceStream by
// version can build it.
#include "cxxhash.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DS_XXH3_DISPATCH 1
#include <immintrin.h>  // xxhash.h includes it only when built for AVX2
#define XXH_INLINE_ALL
#define XXH_DISPATCH_AVX2 1
#define XXH_TARGET_AVX2 __attribute__((__target__("avx2")))
// The accumulator must be 32-byte aligned for the AVX2 loop's aligned loads and stores; a baseline
// build would align it to 16 only (a debug build then faults in XXH3_accumulate_512_avx2).
#define XXH_ACC_ALIGN 64
#include <xxhash.h>

__attribute__((__target__("avx2"), __noinline__))
static XXH64_hash_t devstream_xxh3_long_avx2(const void *input, size_t length) {
    return XXH3_hashLong_64b_internal(input, length, XXH3_kSecret, sizeof(XXH3_kSecret),
                                      XXH3_accumulate_512_avx2, XXH3_scrambleAcc_avx2);
}

// -1 until the first call asks the CPU; then 0 or 1. A data race on an int that every thread
// sets to the same value is benign, but it is an atomic so that TSan agrees.
static int devstream_avx2 = -1;

int devstream_xxh3_uses_avx2(void) {
    int v = __atomic_load_n(&devstream_avx2, __ATOMIC_RELAXED);
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx2") ? 1 : 0;
        __atomic_store_n(&devstream_avx2, v, __ATOMIC_RELAXED);
    }
    return v;
}

XXH64_hash_t devstream_xxh3_64bits_path(const void *input, size_t length, int avx2) {
    if (avx2 && length > XXH3_MIDSIZE_MAX && devstream_xxh3_uses_avx2()) return devstream_xxh3_long_avx2(input, length);
    return XXH3_64bits(input, length);  // XXH_INLINE_XXH3_64bits: the baseline build of the same code
}

XXH64_hash_t devstream_xxh3_64bits(const void *input, size_t length) {
    if (length > XXH3_MIDSIZE_MAX && devstream_xxh3_uses_avx2()) return devstream_xxh3_long_avx2(input, length);
    return XXH3_64bits(input, length);
}
#else
int devstream_xxh3_uses_avx2(void) { return 0; }
XXH64_hash_t devstream_xxh3_64bits_path(const void *input, size_t length, int avx2) { (void)avx2; return XXH3_64bits(input, length); }
XXH64_hash_t devstream_xxh3_64bits(const void *input, size_t length) { return XXH3_64bits(input, length); }
#endif
