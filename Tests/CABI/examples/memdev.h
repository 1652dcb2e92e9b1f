/*
 * memdev.h — a device a VMM defines itself, for the C examples and tests of libdevicestream.
 *
 * The device's state is a memfd (mapped shared) of `size` bytes. The library reads and writes
 * it at offsets through data_fd; the device itself sees the same pages through its mapping.
 * A source device is filled with a pattern and, while it is in a running state (RUNNING,
 * PRE_COPY and their P2P forms), a thread dirties random 4 KiB pages; the thread is paused
 * (no write after set_state returns) when the device leaves the running states. Dirty tracking
 * is one bit per 4 KiB page, kept with atomics. The digest is XXH3-64 of the whole memory,
 * which is what a `devstream receive --device sim:size=...` destination computes too, and the
 * config is a 64-byte blob in the sim: device's format (magic "DSSIMCFG", version 1, size,
 * then seed, generation and three registers), so a sim: destination accepts it.
 */
#ifndef MEMDEV_H
#define MEMDEV_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stddef.h>
#include "devicestream.h"

#define MEMDEV_PAGE 4096u
#define MEMDEV_MAX_LOG 64

typedef struct memdev {
    int fd;
    uint8_t *mem;
    uint64_t size;
    size_t pages;
    size_t words;
    _Atomic uint64_t *dirty;          /* one bit per page */
    atomic_int report_all;            /* the next dirty_bitmap call reports every page */
    atomic_uint state;                /* DS_STATE_*, as set_state left it */
    uint64_t seed;
    atomic_uint_fast64_t generation;  /* pages the dirtier has written */
    uint64_t loaded_generation;       /* from load_config (a destination) */
    int config_loaded;

    /* The dirtier: pages_per_ms pages every millisecond while `running`. */
    uint32_t pages_per_ms;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int running;                      /* guarded by lock */
    int quit;                         /* guarded by lock */
    int thread_started;
    pthread_t thread;

    /* What the library did to the device (for tests). */
    pthread_mutex_t log_lock;
    uint32_t log[MEMDEV_MAX_LOG];     /* the states set, in order */
    int log_count;
    uint64_t running_at_ns;           /* CLOCK_MONOTONIC when it last entered RUNNING (0: never) */
    atomic_int releases;              /* calls of `release` */
    atomic_int fail_set_state;        /* tests: set_state to this state fails with -EIO (0: never) */
} memdev;

/* A source device (filled with a pattern of `seed`, RUNNING, dirtied at pages_per_ms 4 KiB
 * pages per millisecond; 0: not dirtied) or a destination device (zeros, RESUMING). `size`
 * is a multiple of 4096. Returns NULL (with errno) on failure. */
memdev *memdev_new_source(uint64_t size, uint64_t seed, uint32_t pages_per_ms);
memdev *memdev_new_destination(uint64_t size);
/* Stops the dirtier, unmaps and closes. After ds_device_free. */
void memdev_free(memdev *d);

/* The callback table for ds_device_from_ops (role: DS_ROLE_SOURCE or DS_ROLE_DESTINATION). */
ds_device_ops memdev_ops(const memdev *d, int role);
/* ds_device_from_ops over memdev_ops. */
ds_device *memdev_device(memdev *d, int role, ds_error **err);

/* XXH3-64 of the whole memory (what the digest callback returns). */
uint64_t memdev_digest(const memdev *d);
/* Whether set_state ever moved the device to `state`. */
int memdev_entered(memdev *d, uint32_t state);
/* The states set so far, as "RUNNING -> PRE_COPY -> ..." into buf. */
const char *memdev_history(memdev *d, char *buf, size_t cap);
const char *memdev_state_name(uint32_t state);

/* Helpers shared by the examples and tests. */
uint64_t memdev_now_ns(void);
/* Makes a 32-byte key, writes it as hex into `path` (mode 0600). Returns 0 or -errno. */
int memdev_make_key(const char *path, uint8_t key[32]);
/* Reads a key file of hex (at least 32 bytes' worth). Returns the key length or -errno. */
int memdev_read_key(const char *path, uint8_t *key, size_t cap);
/* Parses "64M", "32MiB", "65536", "1G" into bytes; 0 on error. */
uint64_t memdev_parse_size(const char *text);

#endif
