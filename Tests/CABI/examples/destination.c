/*
 * destination.c — the destination side of a live migration through libdevicestream's C ABI.
 *
 * Makes a key (32 random bytes, written as hex into KEY with mode 0600: give that file to the
 * source), listens, receives one migration into its own device (memdev.c, in RESUMING) and
 * runs it.
 *
 *   destination --key-file KEY [--listen 127.0.0.1:0] [--size 32M]
 *
 * The first line it prints is "listening on HOST:PORT". At the end it prints the report and
 * "digests equal" when both ends' digests of the device matched.
 *
 * Build: cc -I DIR/include destination.c memdev.c -L DIR/lib -ldevicestream -Wl,-rpath,DIR/lib -lxxhash -lpthread
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "devicestream.h"
#include "memdev.h"

static void on_event(const ds_event *e, void *user) {
    (void)user;
    if (e->kind == DS_EVENT_HANDOVER && e->phase == DS_PHASE_RUNNING) printf("device running\n");
    if (e->kind == DS_EVENT_WARNING) fprintf(stderr, "%s\n", e->text);
    fflush(stdout);
}

static int fail(const char *what, ds_error *err) {
    fprintf(stderr, "destination: %s: %s (code %d)\n", what, err ? ds_error_message(err) : "?", err ? ds_error_code(err) : -1);
    if (err && ds_error_hint(err)) fprintf(stderr, "  hint: %s\n", ds_error_hint(err));
    ds_error_free(err);
    return 1;
}

int main(int argc, char **argv) {
    const char *listen = "127.0.0.1:0", *key_file = NULL;
    uint64_t size = 32ull << 20;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--listen") && v) listen = argv[++i];
        else if (!strcmp(a, "--key-file") && v) key_file = argv[++i];
        else if (!strcmp(a, "--size") && v) size = memdev_parse_size(argv[++i]);
        else { fprintf(stderr, "usage: %s --key-file KEY [--listen HOST:PORT] [--size 32M]\n", argv[0]); return 2; }
    }
    if (!key_file || size == 0) { fprintf(stderr, "destination: --key-file is required\n"); return 2; }

    uint8_t key[32];
    int krc = memdev_make_key(key_file, key);
    if (krc < 0) { fprintf(stderr, "destination: cannot write the key file %s: %s\n", key_file, strerror(-krc)); return 1; }

    memdev *mem = memdev_new_destination(size);
    if (!mem) { perror("destination: memdev"); return 1; }
    ds_error *err = NULL;
    ds_device *dev = memdev_device(mem, DS_ROLE_DESTINATION, &err);
    if (!dev) return fail("device", err);

    ds_options *opts = ds_options_new();
    if (ds_options_set_psk(opts, key, sizeof key, &err) != 0) return fail("key", err);
    ds_dest *dst = ds_dest_new(&dev, 1, opts, &err);
    ds_options_free(opts);
    if (!dst) return fail("destination", err);

    char host[256];
    snprintf(host, sizeof host, "%s", listen);
    char *colon = strrchr(host, ':');
    if (colon) *colon = 0;
    uint16_t port = 0;
    if (ds_dest_listen(dst, listen, &port, on_event, NULL, &err) != 0) return fail("listen", err);
    printf("listening on %s:%u\n", host, port);
    fflush(stdout);

    int rc = ds_dest_wait(dst, UINT64_MAX, &err);
    ds_report r = {.struct_size = sizeof r};
    ds_dest_report(dst, &r);
    printf("completed %d, %" PRIu64 " rounds loaded, total %.1f ms\n", r.completed, r.iterations, r.total_ns / 1e6);
    printf("device state: %s, digest %016" PRIx64 "\n", memdev_state_name(atomic_load(&mem->state)), memdev_digest(mem));
    if (rc == 0 && r.digests_verified == 1) printf("digests equal\n");
    int status = 0;
    if (rc != 0) status = fail("migration", err);
    else if (r.digests_verified != 1) { fprintf(stderr, "destination: the digests were not verified\n"); status = 1; }

    ds_dest_free(dst);
    ds_device_free(dev);
    memdev_free(mem);
    return status;
}
