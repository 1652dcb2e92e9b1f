// libxxhash (Debian 0.8.1) for the streaming XXH3-64 hasher, plus devstream_xxh3_64bits: the one-shot
// XXH3-64 that every chunk checksum uses, with an AVX2 path chosen at run time (xxh3_dispatch.c).
#ifndef DEVSTREAM_CXXHASH_H
#define DEVSTREAM_CXXHASH_H
#include <stddef.h>
#include <xxhash.h>

/// XXH3-64 (seed 0, default secret) of `length` bytes at `input`: the same value as
/// `XXH3_64bits`, computed with AVX2 where the CPU and kernel support it.
XXH64_hash_t devstream_xxh3_64bits(const void *input, size_t length);

/// 1 when devstream_xxh3_64bits takes its AVX2 path on this machine, 0 when it runs the baseline loop.
int devstream_xxh3_uses_avx2(void);

/// devstream_xxh3_64bits forced to the baseline (SSE2) loop (0) or to the AVX2 path (1, only where
/// devstream_xxh3_uses_avx2 says 1): for the test that both paths agree, and for A/B measurements.
XXH64_hash_t devstream_xxh3_64bits_path(const void *input, size_t length, int avx2);
#endif
