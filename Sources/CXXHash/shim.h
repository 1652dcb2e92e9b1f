// libxxhash (Debian 0.8.1): XXH3-64 for chunk checksums and device digests.
#ifndef DEVSTREAM_CXXHASH_SHIM_H
#define DEVSTREAM_CXXHASH_SHIM_H
#include <xxhash.h>
#endif
