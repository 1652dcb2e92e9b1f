// libxxhash (Debian 0.8.1): XXH3-64 for chunk checksums and device digests.
//
// devstream_xxh3_64bits and devstream_xxh3_update are what DeviceStream calls. On x86-64 they
// are libxxhash's *_dispatch entry points, which pick the widest vector loop the CPU and kernel
// support (cpuid and xgetbv: AVX-512, AVX2 or SSE2), because the plain XXH3_64bits of Debian's
// build is compiled for baseline x86-64 and always runs the SSE2 loop. On 1 MiB in cache here:
// 21 GB/s plain, 90 GB/s dispatched (AVX-512); XXH3 was 8% of each end's CPU in a 1 GiB
// transfer (README, "Where the CPU goes"). The value is the same XXH3-64 on every path
// (XXH3DispatchTests, XXH3DigestTests). Elsewhere the plain functions. libxxhash.a has no dispatch: link the .so.
#ifndef DEVSTREAM_CXXHASH_SHIM_H
#define DEVSTREAM_CXXHASH_SHIM_H
#include <xxhash.h>
#if defined(__x86_64__)
#define XXH_DISPATCH_DISABLE_REPLACE 1  // keep XXH3_64bits the plain function, for the tests
#include <xxh_x86dispatch.h>
#endif

static inline XXH64_hash_t devstream_xxh3_64bits(const void *input, size_t length) {
#if defined(__x86_64__)
    return XXH3_64bits_dispatch(input, length);
#else
    return XXH3_64bits(input, length);
#endif
}

static inline XXH_errorcode devstream_xxh3_update(XXH3_state_t *state, const void *input, size_t length) {
#if defined(__x86_64__)
    return XXH3_64bits_update_dispatch(state, input, length);
#else
    return XXH3_64bits_update(state, input, length);
#endif
}
#endif
