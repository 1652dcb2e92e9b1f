/*
 * memdev.c — an addressable device in memory behind ds_device_from_ops (see memdev.h).
 */
#define _GNU_SOURCE 1
#include "memdev.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#define CONFIG_MAGIC   0x4746434D49535344ull /* "DSSIMCFG" little-endian: the sim: device's config */
#define CONFIG_VERSION 1ull
#define CONFIG_BYTES   64

uint64_t memdev_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t mix64(uint64_t x) { /* splitmix64's finalizer */
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static int is_running(uint32_t s) {
    return s == DS_STATE_RUNNING || s == DS_STATE_RUNNING_P2P || s == DS_STATE_PRE_COPY || s == DS_STATE_PRE_COPY_P2P;
}

const char *memdev_state_name(uint32_t s) {
    static const char *names[] = {"ERROR", "STOP", "RUNNING", "STOP_COPY", "RESUMING", "RUNNING_P2P", "PRE_COPY", "PRE_COPY_P2P"};
    return s < sizeof names / sizeof names[0] ? names[s] : "?";
}

/* ---- the dirtier ------------------------------------------------------------------------- */

/* Rewrites one page: the page number, the generation, and pseudo-random words. */
static void dirty_page(memdev *d, size_t page, uint64_t gen) {
    uint64_t *w = (uint64_t *)(d->mem + page * MEMDEV_PAGE);
    for (size_t i = 0; i < MEMDEV_PAGE / 8; i++) w[i] = i < 256 ? (page << 32 | gen) : mix64(gen ^ (page << 20) ^ i);
    /* The bit after the write: a page the library reads before this write lands is reported again. */
    atomic_fetch_or_explicit(&d->dirty[page / 64], 1ull << (page % 64), memory_order_release);
}

static void *dirtier(void *arg) {
    memdev *d = arg;
    uint64_t rng = mix64(d->seed ^ 0xD1127ull);
    pthread_mutex_lock(&d->lock);
    for (;;) {
        while (!d->running && !d->quit) pthread_cond_wait(&d->cond, &d->lock);
        if (d->quit) break;
        /* Pages are written under the lock, so pausing (set_state) waits for a write in flight. */
        for (uint32_t i = 0; i < d->pages_per_ms; i++) {
            rng = mix64(rng);
            uint64_t gen = atomic_fetch_add(&d->generation, 1) + 1;
            dirty_page(d, (size_t)(rng % d->pages), gen);
        }
        pthread_mutex_unlock(&d->lock);
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
        pthread_mutex_lock(&d->lock);
    }
    pthread_mutex_unlock(&d->lock);
    return NULL;
}

static void set_dirtying(memdev *d, int on) {
    pthread_mutex_lock(&d->lock);
    d->running = on;
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->lock);
}

/* ---- the callbacks ----------------------------------------------------------------------- */

static int cb_set_state(void *user, uint32_t from, uint32_t to) {
    memdev *d = user;
    if (atomic_load(&d->fail_set_state) != 0 && atomic_load(&d->fail_set_state) == (int)to) return -EIO;
    /* Dirty tracking: entering PRE_COPY from a running state, or STOP_COPY without pre-copy,
     * makes the next dirty_bitmap call report every page. */
    if ((to == DS_STATE_PRE_COPY || to == DS_STATE_PRE_COPY_P2P) && (from == DS_STATE_RUNNING || from == DS_STATE_RUNNING_P2P))
        atomic_store(&d->report_all, 1);
    if (to == DS_STATE_STOP_COPY && from != DS_STATE_PRE_COPY && from != DS_STATE_PRE_COPY_P2P)
        atomic_store(&d->report_all, 1);
    if (d->thread_started) {
        if (!is_running(to)) set_dirtying(d, 0); /* returns once no write is in flight */
        else if (!is_running(from)) set_dirtying(d, 1);
    }
    atomic_store(&d->state, to);
    pthread_mutex_lock(&d->log_lock);
    if (d->log_count < MEMDEV_MAX_LOG) d->log[d->log_count++] = to;
    if (to == DS_STATE_RUNNING) d->running_at_ns = memdev_now_ns();
    pthread_mutex_unlock(&d->log_lock);
    return 0;
}

static int cb_data_fd(void *user, int for_load) {
    (void)for_load;
    return ((memdev *)user)->fd;
}

static int cb_dirty_bitmap(void *user, uint64_t *bitmap, size_t words, int clear) {
    memdev *d = user;
    if (words < d->words) return -EINVAL;
    int all = clear ? atomic_exchange(&d->report_all, 0) : atomic_load(&d->report_all);
    for (size_t w = 0; w < d->words; w++) {
        uint64_t v = clear ? atomic_exchange_explicit(&d->dirty[w], 0, memory_order_acq_rel)
                           : atomic_load_explicit(&d->dirty[w], memory_order_acquire);
        if (all) {
            size_t left = d->pages - w * 64;
            v = left >= 64 ? ~0ull : (1ull << left) - 1;
        }
        bitmap[w] |= v;
    }
    return 0;
}

static void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint64_t get64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static int64_t cb_save_config(void *user, void *buffer, size_t capacity) {
    memdev *d = user;
    if (capacity < CONFIG_BYTES) return -ENOSPC;
    uint8_t *b = buffer;
    uint64_t gen = d->config_loaded ? d->loaded_generation : atomic_load(&d->generation);
    put64(b, CONFIG_MAGIC);
    put64(b + 8, CONFIG_VERSION);
    put64(b + 16, d->size);
    put64(b + 24, d->seed);
    put64(b + 32, gen);
    uint64_t r = d->seed ^ (gen * 0x9E3779B97F4A7C15ull);
    for (int i = 0; i < 3; i++) { r = mix64(r); put64(b + 40 + 8 * i, r); }
    return CONFIG_BYTES;
}

static int cb_load_config(void *user, const void *buffer, size_t length) {
    memdev *d = user;
    const uint8_t *b = buffer;
    if (length != CONFIG_BYTES || get64(b) != CONFIG_MAGIC || get64(b + 8) != CONFIG_VERSION) return -EINVAL;
    if (get64(b + 16) != d->size) return -EINVAL;
    d->seed = get64(b + 24);
    d->loaded_generation = get64(b + 32);
    d->config_loaded = 1;
    return 0;
}

uint64_t memdev_digest(const memdev *d) { return XXH3_64bits(d->mem, d->size); }

static int cb_digest(void *user, uint64_t *digest) {
    *digest = memdev_digest(user);
    return 0;
}

static void cb_release(void *user) { atomic_fetch_add(&((memdev *)user)->releases, 1); }

ds_device_ops memdev_ops(const memdev *d, int role) {
    ds_device_ops ops;
    memset(&ops, 0, sizeof ops);
    ops.struct_size = sizeof ops;
    ops.kind = DS_DEVICE_ADDRESSABLE;
    ops.migration_flags = DS_MIGRATION_STOP_COPY | DS_MIGRATION_PRE_COPY;
    ops.name = role == DS_ROLE_SOURCE ? "memdev-source" : "memdev-destination";
    ops.size = d->size;
    ops.tracking_chunk = MEMDEV_PAGE;
    ops.initial_state = role == DS_ROLE_SOURCE ? DS_STATE_RUNNING : DS_STATE_RESUMING;
    ops.set_state = cb_set_state;
    ops.data_fd = cb_data_fd;
    ops.dirty_bitmap = cb_dirty_bitmap;
    ops.save_config = cb_save_config;
    ops.load_config = cb_load_config;
    ops.digest = cb_digest;
    ops.release = cb_release;
    return ops;
}

ds_device *memdev_device(memdev *d, int role, ds_error **err) {
    ds_device_ops ops = memdev_ops(d, role);
    return ds_device_from_ops(&ops, d, err);
}

/* ---- making and freeing ------------------------------------------------------------------ */

static memdev *memdev_alloc(uint64_t size, uint32_t state) {
    if (size == 0 || size % MEMDEV_PAGE != 0) { errno = EINVAL; return NULL; }
    memdev *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->size = size;
    d->pages = size / MEMDEV_PAGE;
    d->words = (d->pages + 63) / 64;
    d->fd = memfd_create("memdev", MFD_CLOEXEC);
    if (d->fd < 0) goto fail;
    if (ftruncate(d->fd, (off_t)size) != 0) goto fail;
    d->mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, d->fd, 0);
    if (d->mem == MAP_FAILED) { d->mem = NULL; goto fail; }
    d->dirty = calloc(d->words, sizeof *d->dirty);
    if (!d->dirty) goto fail;
    atomic_init(&d->state, state);
    pthread_mutex_init(&d->lock, NULL);
    pthread_cond_init(&d->cond, NULL);
    pthread_mutex_init(&d->log_lock, NULL);
    return d;
fail:;
    int e = errno;
    if (d->mem) munmap(d->mem, size);
    if (d->fd >= 0) close(d->fd);
    free(d);
    errno = e;
    return NULL;
}

memdev *memdev_new_source(uint64_t size, uint64_t seed, uint32_t pages_per_ms) {
    memdev *d = memdev_alloc(size, DS_STATE_RUNNING);
    if (!d) return NULL;
    d->seed = seed;
    /* The pattern: per page, a compressible half (page number, seed) and a pseudo-random half. */
    for (size_t p = 0; p < d->pages; p++) {
        uint64_t *w = (uint64_t *)(d->mem + p * MEMDEV_PAGE);
        for (size_t i = 0; i < MEMDEV_PAGE / 8; i++) w[i] = i < 256 ? (p << 8 ^ seed) : mix64(seed ^ (p << 20) ^ i);
    }
    d->pages_per_ms = pages_per_ms;
    if (pages_per_ms > 0) {
        d->running = 1;
        if (pthread_create(&d->thread, NULL, dirtier, d) != 0) { memdev_free(d); errno = EAGAIN; return NULL; }
        d->thread_started = 1;
    }
    return d;
}

memdev *memdev_new_destination(uint64_t size) { return memdev_alloc(size, DS_STATE_RESUMING); }

void memdev_free(memdev *d) {
    if (!d) return;
    if (d->thread_started) {
        pthread_mutex_lock(&d->lock);
        d->quit = 1;
        pthread_cond_broadcast(&d->cond);
        pthread_mutex_unlock(&d->lock);
        pthread_join(d->thread, NULL);
    }
    munmap(d->mem, d->size);
    close(d->fd);
    free(d->dirty);
    pthread_mutex_destroy(&d->lock);
    pthread_cond_destroy(&d->cond);
    pthread_mutex_destroy(&d->log_lock);
    free(d);
}

int memdev_entered(memdev *d, uint32_t state) {
    int found = 0;
    pthread_mutex_lock(&d->log_lock);
    for (int i = 0; i < d->log_count; i++) found |= d->log[i] == state;
    pthread_mutex_unlock(&d->log_lock);
    return found;
}

const char *memdev_history(memdev *d, char *buf, size_t cap) {
    size_t n = 0;
    buf[0] = 0;
    pthread_mutex_lock(&d->log_lock);
    for (int i = 0; i < d->log_count && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%s", i ? " -> " : "", memdev_state_name(d->log[i]));
    pthread_mutex_unlock(&d->log_lock);
    return buf;
}

/* ---- keys and sizes ---------------------------------------------------------------------- */

int memdev_make_key(const char *path, uint8_t key[32]) {
    size_t got = 0;
    while (got < 32) {
        ssize_t n = getrandom(key + got, 32 - got, 0);
        if (n < 0) { if (errno == EINTR) continue; return -errno; }
        got += (size_t)n;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return -errno;
    if (fchmod(fd, 0600) != 0) { int e = errno; close(fd); return -e; }
    char hex[66];
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", key[i]);
    hex[64] = '\n';
    ssize_t w = write(fd, hex, 65);
    int e = w == 65 ? 0 : (w < 0 ? errno : EIO);
    if (close(fd) != 0 && !e) e = errno;
    return -e;
}

int memdev_read_key(const char *path, uint8_t *key, size_t cap) {
    FILE *f = fopen(path, "re");
    if (!f) return -errno;
    size_t n = 0;
    int hi = -1, c;
    while ((c = fgetc(f)) != EOF) {
        if (isspace(c)) continue;
        int v = isdigit(c) ? c - '0' : (isxdigit(c) ? (tolower(c) - 'a' + 10) : -1);
        if (v < 0 || n >= cap) { fclose(f); return -EINVAL; }
        if (hi < 0) hi = v;
        else { key[n++] = (uint8_t)(hi << 4 | v); hi = -1; }
    }
    fclose(f);
    if (hi >= 0 || n < 32) return -EINVAL;
    return (int)n;
}

uint64_t memdev_parse_size(const char *text) {
    char *end;
    unsigned long long v = strtoull(text, &end, 10);
    if (end == text) return 0;
    switch (toupper((unsigned char)*end)) {
    case 'K': v <<= 10; end++; break;
    case 'M': v <<= 20; end++; break;
    case 'G': v <<= 30; end++; break;
    case 0: return v;
    default: return 0;
    }
    if (*end == 'i' && end[1] == 'B') end += 2;
    else if (*end == 'B') end++;
    return *end ? 0 : v;
}
