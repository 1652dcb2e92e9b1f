// liblz4 (Debian 1.9.4). The shared library exports LZ4_compress_fast_extState but not the
// _fastReset or dictionary-attach variants; decode network bytes with LZ4_decompress_safe only.
#ifndef DEVSTREAM_CLZ4_SHIM_H
#define DEVSTREAM_CLZ4_SHIM_H
#include <lz4.h>
#endif
