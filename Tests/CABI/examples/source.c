/*
 * source.c — the source side of a live migration through libdevicestream's C ABI.
 *
 * A "VMM" with its own device (memdev.c: 32 MiB of memory in a memfd, dirtied by a thread while
 * it runs) migrates it to a destination: destination.c, or `devstream receive --device
 * sim:size=32M` (the device's digest and config are the sim: device's formats).
 *
 *   source --connect HOST:PORT --key-file KEY [--size 32M] [--dirty PAGES_PER_MS] [--connections N]
 *
 * KEY is the hex key file the destination made (destination.c writes one; for devstream
 * receive, `openssl rand -hex 32 > KEY`). Prints each pre-copy round, the report, and
 * "digests equal" when both ends' digests of the device matched.
 *
 * Build: cc -I DIR/include source.c memdev.c -L DIR/lib -ldevicestream -Wl,-rpath,DIR/lib -lxxhash -lpthread
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "devicestream.h"
#include "memdev.h"

static void on_event(const ds_event *e, void *user) {
    (void)user;
    switch (e->kind) {
    case DS_EVENT_ITERATION:
        printf("round %" PRIu64 ": %" PRIu64 " bytes sent, %" PRIu64 " dirty, predicted downtime %.2f ms\n", e->iteration,
               e->bytes, e->dirty_bytes, e->predicted_downtime_ns < 0 ? -1.0 : e->predicted_downtime_ns / 1e6);
        break;
    case DS_EVENT_SWITCHOVER:
        printf("switchover (reason %u)\n", e->reason);
        break;
    case DS_EVENT_WARNING:
        fprintf(stderr, "%s\n", e->text);
        break;
    default:
        break;
    }
    fflush(stdout);
}

static int fail(const char *what, ds_error *err) {
    fprintf(stderr, "source: %s: %s (code %d)\n", what, err ? ds_error_message(err) : "?", err ? ds_error_code(err) : -1);
    if (err && ds_error_hint(err)) fprintf(stderr, "  hint: %s\n", ds_error_hint(err));
    ds_error_free(err);
    return 1;
}

int main(int argc, char **argv) {
    const char *connect = NULL, *key_file = NULL;
    uint64_t size = 32ull << 20;
    uint32_t dirty = 8, connections = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--connect") && v) connect = argv[++i];
        else if (!strcmp(a, "--key-file") && v) key_file = argv[++i];
        else if (!strcmp(a, "--size") && v) size = memdev_parse_size(argv[++i]);
        else if (!strcmp(a, "--dirty") && v) dirty = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "--connections") && v) connections = (uint32_t)strtoul(argv[++i], NULL, 10);
        else { fprintf(stderr, "usage: %s --connect HOST:PORT --key-file KEY [--size 32M] [--dirty PAGES_PER_MS] [--connections N]\n", argv[0]); return 2; }
    }
    if (!connect || !key_file || size == 0) { fprintf(stderr, "source: --connect and --key-file are required\n"); return 2; }

    uint8_t key[64];
    int key_len = memdev_read_key(key_file, key, sizeof key);
    if (key_len < 0) { fprintf(stderr, "source: cannot read a hex key of 32+ bytes from %s\n", key_file); return 1; }

    memdev *mem = memdev_new_source(size, 1, dirty);
    if (!mem) { perror("source: memdev"); return 1; }
    ds_error *err = NULL;
    ds_device *dev = memdev_device(mem, DS_ROLE_SOURCE, &err);
    if (!dev) return fail("device", err);

    ds_options *opts = ds_options_new();
    if (ds_options_set_psk(opts, key, (size_t)key_len, &err) != 0) return fail("key", err);
    if (ds_options_set_connections(opts, connections, &err) != 0) return fail("connections", err);
    ds_source *src = ds_source_new(&dev, 1, opts, &err);
    ds_options_free(opts);
    if (!src) return fail("source", err);

    printf("migrating %" PRIu64 " bytes to %s\n", size, connect);
    fflush(stdout);
    if (ds_source_connect(src, connect, on_event, NULL, &err) != 0) return fail("connect", err);
    int rc = ds_source_wait(src, UINT64_MAX, &err);

    ds_report r = {.struct_size = sizeof r};
    ds_source_report(src, &r);
    printf("completed %d, rounds %" PRIu64 ", pre-copy %" PRIu64 " bytes, stop-copy %" PRIu64 " bytes, wire %" PRIu64
           " bytes, downtime %.2f ms (limit %.0f ms), total %.1f ms\n",
           r.completed, r.iterations, r.precopy_bytes, r.stopcopy_bytes, r.wire_bytes, r.downtime_ns / 1e6,
           r.downtime_limit_ns / 1e6, r.total_ns / 1e6);
    printf("device state: %s, digest %016" PRIx64 "\n", memdev_state_name(atomic_load(&mem->state)), memdev_digest(mem));
    if (rc == 0 && r.digests_verified == 1) printf("digests equal\n");
    int status = 0;
    if (rc != 0) status = fail("migration", err);
    else if (r.digests_verified != 1) { fprintf(stderr, "source: the digests were not verified\n"); status = 1; }

    ds_source_free(src);
    ds_device_free(dev);
    memdev_free(mem);
    return status;
}
