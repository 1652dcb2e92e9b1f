/*
 * devicestream.h — the C ABI of DeviceStream (libdevicestream.so.1).
 *
 * DeviceStream moves a running device's state (GPU memory, NIC queues, a VFIO migration
 * stream) from one host to another: pre-copy rounds while the device runs, a switchover that
 * fits a downtime budget, and a two-phase handover (the destination loads and validates, the
 * source commits, the destination runs). This header is the contract: every function is
 * documented here; the library is Swift with its runtime linked in statically, and exports
 * only the ds_* symbols below.
 *
 * ABI rules
 *  - Handles (ds_options, ds_device, ds_source, ds_dest, ds_error) are opaque. Each handle a
 *    function returns is freed exactly once by its *_free function; *_free(NULL) does nothing.
 *  - Structs the library fills (ds_stats, ds_report, ds_event) and structs the caller fills
 *    (ds_device_ops) begin with `struct_size`: set it to sizeof(the struct) you compiled
 *    with. The library reads or writes only the fields that size covers, so the ABI can grow
 *    at the end without breaking old callers.
 *  - Errors: a function that can fail returns -1 (or NULL) and, when `err` is not NULL, stores
 *    a ds_error the caller frees with ds_error_free. It carries a code (DS_ERR_*), a message
 *    (what failed, where) and an optional hint (what to do).
 *  - Strings in are UTF-8, NUL-terminated, copied before the call returns. Strings out are
 *    owned by the handle they come from.
 *
 * Threads
 *  - ds_source_connect / ds_source_attach_fds / ds_dest_listen / ds_dest_attach_fds return at
 *    once; the session runs on library threads: one "ds-session" thread that drives it, one
 *    thread per connection ("ds-send-N" / "ds-recv-N", each with its own io_uring), one
 *    "ds-feedback" reader on the source, and on a listening destination one "ds-accept"
 *    thread and a short-lived "ds-preamble" thread per incoming connection.
 *  - Every library thread of a session has been joined when ds_*_wait returns a final result,
 *    and when ds_*_free returns (free cancels a running session first).
 *  - Event callbacks (ds_event_fn) and device callbacks (ds_device_ops) are called on library
 *    threads, never on the caller's. They must return promptly and must not call ds_*_wait or
 *    ds_*_free on the session they belong to. Device callbacks of one device may be called from
 *    several threads at once (addressable reads at different offsets); stream read/write and
 *    state transitions are serialized by the library.
 *  - Every other function may be called from any thread.
 *  - The library writes nothing on stdout or stderr: warnings come only as DS_EVENT_WARNING.
 *
 * Syscalls (for a seccomp filter): io_uring_setup, io_uring_enter, io_uring_register (unless
 * the blocking backend is chosen with ds_options_set_backend); socket, connect, bind, listen,
 * accept4, setsockopt, getsockopt, getsockname, getpeername, shutdown, sendto/sendmsg,
 * recvfrom/recvmsg, poll/ppoll, read, write, pread64, pwrite64, openat, close, fstat, statfs,
 * ftruncate, fallocate, fsync, fdatasync, renameat, unlinkat, memfd_create (simulated devices),
 * ioctl (VFIO devices), mmap, munmap, madvise, mprotect, brk, clone/clone3, futex,
 * set_robust_list, rseq, prctl (thread names), sched_yield, nanosleep/clock_nanosleep,
 * clock_gettime, getrandom (TLS), rt_sigprocmask, exit.
 */
#ifndef DEVICESTREAM_H
#define DEVICESTREAM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI version: major << 16 | minor. A new minor only adds; a new major changes the SONAME.
 * 1.1 added ds_report.protection. */
#define DS_ABI_VERSION_MAJOR 1
#define DS_ABI_VERSION_MINOR 1
uint32_t ds_abi_version(void);

/* ---------------------------------------------------------------------------------------- */
/* Errors                                                                                    */

typedef struct ds_error ds_error;

#define DS_OK                   0
#define DS_ERR_CONNECT          1  /* could not connect (refused, unreachable, bad address) */
#define DS_ERR_PEER_CLOSED      2  /* the peer closed or reset the connection early */
#define DS_ERR_PROTOCOL         3  /* the peer broke the protocol */
#define DS_ERR_CORRUPTION       4  /* a checksum, count or digest does not match */
#define DS_ERR_TIMEOUT          5  /* no progress within the timeout (or a hold ran out) */
#define DS_ERR_LOCAL_IO         6  /* a local file, memory or thread resource failed */
#define DS_ERR_REJECTED         7  /* the peer refused the session (credentials, busy) */
#define DS_ERR_REMOTE           8  /* the peer reported an error of its own */
#define DS_ERR_USAGE            9  /* a bad argument or option */
#define DS_ERR_DEVICE          10  /* a device refused an operation */
#define DS_ERR_ABORTED         11  /* the scheduler gave up (non-convergence, deadline) */
#define DS_ERR_CANCELLED       12  /* the caller cancelled */
#define DS_ERR_STATE           13  /* the call does not fit the handle's state (e.g. connect twice) */

/* The error's DS_ERR_* code. */
int ds_error_code(const ds_error *err);
/* What failed and where; never NULL; owned by `err`. */
const char *ds_error_message(const ds_error *err);
/* What to do about it, or NULL; owned by `err`. */
const char *ds_error_hint(const ds_error *err);
void ds_error_free(ds_error *err);

/* ---------------------------------------------------------------------------------------- */
/* Options (both ends)                                                                       */

typedef struct ds_options ds_options;

#define DS_POLICY_WAIT        0  /* keep iterating until the deadline, then abort */
#define DS_POLICY_SWITCHOVER  1  /* switch over anyway when pre-copy does not converge */
#define DS_POLICY_ABORT       2  /* abort at once, staying on the source */

#define DS_BACKEND_AUTO       0  /* io_uring where the kernel allows it, else blocking */
#define DS_BACKEND_IO_URING   1
#define DS_BACKEND_BLOCKING   2  /* plain syscalls: for hosts whose seccomp forbids io_uring */

/* New options with the defaults: 2 connections, LZ4, 300 ms downtime limit, policy WAIT,
 * 60 s deadline, 30 s stall timeout, automatic switchover, no hold, and no security: a session
 * then refuses to start (DS_ERR_USAGE) until ds_options_set_psk gives it a key (or
 * ds_options_set_insecure allows plaintext). */
ds_options *ds_options_new(void);
void ds_options_free(ds_options *opts);
/* TCP connections (channels), 1..64. */
int ds_options_set_connections(ds_options *opts, uint32_t connections, ds_error **err);
/* TLS 1.3 with a pre-shared key (at least 32 bytes; the same at both ends). */
int ds_options_set_psk(ds_options *opts, const uint8_t *key, size_t length, ds_error **err);
/* Allow a session without a key: plaintext and unauthenticated, on any address, loopback
 * included. It gives up all protection (any local user can connect; anyone on the path can read
 * or change the data): only where every user and the network are trusted. Handed-in Unix
 * sockets whose peer runs as the same user need neither (the kernel vouches for the peer). */
int ds_options_set_insecure(ds_options *opts, int allow);
/* The downtime budget switchover must fit, in nanoseconds (> 0). */
int ds_options_set_downtime_limit_ns(ds_options *opts, uint64_t ns, ds_error **err);
/* DS_POLICY_*: what to do when pre-copy does not converge. */
int ds_options_set_policy(ds_options *opts, int policy, ds_error **err);
/* Give up (or switch over, per policy) this long after the start; 0: no deadline. */
int ds_options_set_deadline_ns(ds_options *opts, uint64_t ns);
/* Fail when the peer makes no progress for this long (> 0). */
int ds_options_set_timeout_ns(ds_options *opts, uint64_t ns, ds_error **err);
/* DS_BACKEND_*. */
int ds_options_set_backend(ds_options *opts, int backend, ds_error **err);
/* Source: the caller switches over (ds_source_switchover) after DS_EVENT_READY_TO_SWITCHOVER. */
int ds_options_external_switchover(ds_options *opts, int on);
/* Destination: after the source's commit, the devices wait in STOP until ds_dest_resume, at
 * most `timeout_ns` (then the session fails with both ends stopped); 0 turns the hold off. */
int ds_options_hold_resume(ds_options *opts, uint64_t timeout_ns);

/* ---------------------------------------------------------------------------------------- */
/* Devices                                                                                   */

typedef struct ds_device ds_device;

/* VFIO v2 device states (VFIO_DEVICE_STATE_*). */
#define DS_STATE_ERROR         0
#define DS_STATE_STOP          1
#define DS_STATE_RUNNING       2
#define DS_STATE_STOP_COPY     3
#define DS_STATE_RESUMING      4
#define DS_STATE_RUNNING_P2P   5
#define DS_STATE_PRE_COPY      6
#define DS_STATE_PRE_COPY_P2P  7

/* VFIO migration flags (VFIO_MIGRATION_*). */
#define DS_MIGRATION_STOP_COPY (1u << 0)
#define DS_MIGRATION_P2P       (1u << 1)
#define DS_MIGRATION_PRE_COPY  (1u << 2)

#define DS_ROLE_SOURCE       0
#define DS_ROLE_DESTINATION  1

/* A device from a spec string (the CLI's --device):
 *   sim:size=1G,dirty-rate=64M,hot=10%,profile=mixed,seed=1  a simulated device with memory
 *   vfio-emu:size=64M,dirty-rate=8M,seed=1                   an emulated VFIO v2 stream device
 *   file:PATH                                                a file or block device
 *   vfio:/dev/vfio/devices/vfioN  or  vfio:GROUP@DEVICE       a real VFIO device
 * A DS_ROLE_DESTINATION sim:/vfio-emu: device needs size= (equal to the source's). */
ds_device *ds_device_from_spec(const char *spec, int role, ds_error **err);

#define DS_DEVICE_ADDRESSABLE 0  /* state at byte offsets of an fd, with a dirty bitmap */
#define DS_DEVICE_STREAM      1  /* an opaque ordered stream (a VFIO data_fd) */

/* A device the VMM defines. Every callback gets `user`. Callbacks return 0 (or a count) on
 * success and a negative errno on failure (the session then fails with DS_ERR_DEVICE). */
typedef struct ds_device_ops {
    uint32_t struct_size;       /* sizeof(ds_device_ops) */
    uint32_t kind;              /* DS_DEVICE_ADDRESSABLE or DS_DEVICE_STREAM */
    uint64_t migration_flags;   /* DS_MIGRATION_*: STOP_COPY required; PRE_COPY for pre-copy */
    const char *name;           /* shown in reports and errors (copied) */
    uint64_t size;              /* addressable: bytes of state */
    uint64_t tracking_chunk;    /* addressable: dirty-tracking granularity in bytes (power of two) */
    uint32_t initial_state;     /* DS_STATE_RUNNING (a source) or DS_STATE_RESUMING (a destination) */
    uint32_t reserved;          /* zero */
    /* Moves the device along one arc of the VFIO state machine (`from` -> `to`); the library
     * walks multi-arc paths one arc at a time, in the kernel's order. */
    int (*set_state)(void *user, uint32_t from, uint32_t to);
    /* PRE_COPY: bytes of initial data not yet read and dirty bytes since (VFIO_MIG_GET_PRECOPY_INFO).
     * Optional for addressable devices (the dirty bitmap is used). */
    int (*precopy_info)(void *user, uint64_t *initial_bytes, uint64_t *dirty_bytes);
    /* Bytes STOP_COPY will still produce (VFIO_DEVICE_FEATURE_MIG_DATA_SIZE); optional. */
    int (*stop_copy_size)(void *user, uint64_t *bytes);
    /* Stream: reads up to `length` bytes of migration data; returns the count, 0 for "no data
     * now" (PRE_COPY) or end of stream (STOP_COPY). */
    int64_t (*read)(void *user, void *buffer, size_t length);
    /* Stream: writes the next `length` bytes in order (RESUMING); returns 0. */
    int (*write)(void *user, const void *buffer, size_t length);
    /* Addressable: the fd the library preads (saving states) or pwrites (RESUMING) at
     * offsets; it stays the device's (the library never closes it). */
    int (*data_fd)(void *user, int for_load);
    /* Addressable: ORs the dirty tracking chunks into `bitmap` (`words` 64-bit words, bit i of
     * word w = chunk w*64+i) and, when `clear` is non-zero, clears them in the device. The first
     * call after entering PRE_COPY (or STOP_COPY) must report every chunk. */
    int (*dirty_bitmap)(void *user, uint64_t *bitmap, size_t words, int clear);
    /* Writes the device's config state into `buffer` (capacity `capacity`); returns its length
     * (at most 1 MiB), or -ENOSPC to be called again with more room. */
    int64_t (*save_config)(void *user, void *buffer, size_t capacity);
    /* Loads a config state (RESUMING). */
    int (*load_config)(void *user, const void *buffer, size_t length);
    /* Optional: an XXH3-64 (or any 64-bit) digest of the whole state, equal at both ends when
     * the copy is exact; NULL: the session verifies chunk counts and checksums only. */
    int (*digest)(void *user, uint64_t *digest);
    /* Called once when the device is freed (ds_device_free) and the library is done with it. */
    void (*release)(void *user);
} ds_device_ops;

/* A device from the VMM's callbacks; `ops` is copied, `user` is passed back to each. A table
 * from a newer header (larger struct_size) is read as far as this library knows it. */
ds_device *ds_device_from_ops(const ds_device_ops *ops, void *user, ds_error **err);
/* Frees the device (calls `release` for an ops device; closes a spec device). A device must
 * not be freed while a session that uses it runs. */
void ds_device_free(ds_device *device);

/* ---------------------------------------------------------------------------------------- */
/* Events, statistics, reports                                                               */

#define DS_EVENT_SETUP_DONE           1  /* both: setup is done; duration_ns */
#define DS_EVENT_ITERATION            2  /* source: a pre-copy round ended; iteration, bytes, dirty_bytes, predicted */
#define DS_EVENT_ROUND_LOADED         3  /* destination: a round is loaded; iteration, bytes (all so far) */
#define DS_EVENT_READY_TO_SWITCHOVER  4  /* source, external switchover: call ds_source_switchover; predicted, reason */
#define DS_EVENT_SWITCHOVER           5  /* source: switchover starts; predicted, reason */
#define DS_EVENT_HANDOVER             6  /* both: a handover step; phase */
#define DS_EVENT_DEVICE_PROGRESS      7  /* both: device, bytes */
#define DS_EVENT_WARNING              8  /* both: text */

#define DS_PHASE_STATE_SENT        1  /* source: all state, config and channel ends sent */
#define DS_PHASE_LOADED_SENT       2  /* destination: devices loaded, validated, in STOP */
#define DS_PHASE_LOADED_RECEIVED   3  /* source */
#define DS_PHASE_COMMIT_SENT       4  /* source: the point of no return */
#define DS_PHASE_COMMIT_RECEIVED   5  /* destination: devices may run (after ds_dest_resume with a hold) */
#define DS_PHASE_RUNNING           6  /* destination: devices RUNNING */
#define DS_PHASE_RESUMED_RECEIVED  7  /* source: the downtime is measured */

#define DS_REASON_NONE                0
#define DS_REASON_CONVERGED           1
#define DS_REASON_NOTHING_TO_SEND     2
#define DS_REASON_NONCONVERGENCE      3
#define DS_REASON_DEADLINE            4
#define DS_REASON_NO_PRECOPY          5
#define DS_REASON_REQUESTED           6  /* external switchover */

#define DS_PROTECTION_INSECURE        0  /* plaintext, unauthenticated (ds_options_set_insecure) */
#define DS_PROTECTION_TLS_PSK         1  /* TLS 1.3 with a pre-shared key */
#define DS_PROTECTION_TLS_X509        2  /* TLS 1.3 with x509 certificates */

typedef struct ds_event {
    uint32_t struct_size;
    uint32_t kind;                 /* DS_EVENT_* */
    uint64_t iteration;
    uint64_t bytes;
    uint64_t dirty_bytes;
    int64_t predicted_downtime_ns; /* -1: unknown */
    int64_t duration_ns;
    uint32_t device;
    uint32_t phase;                /* DS_PHASE_* */
    uint32_t reason;               /* DS_REASON_* */
    uint32_t reserved;
    const char *text;              /* DS_EVENT_WARNING; valid during the call only */
} ds_event;
typedef void (*ds_event_fn)(const ds_event *event, void *user);

#define DS_SESSION_IDLE                  0
#define DS_SESSION_SETUP                 1
#define DS_SESSION_PRECOPY               2
#define DS_SESSION_READY_TO_SWITCHOVER   3
#define DS_SESSION_STOP_COPY             4
#define DS_SESSION_HANDOVER              5
#define DS_SESSION_VERIFYING             6
#define DS_SESSION_COMPLETED             7
#define DS_SESSION_FAILED                8

/* A live snapshot (QEMU's query-migrate names where it has them). */
typedef struct ds_stats {
    uint32_t struct_size;          /* in: sizeof(ds_stats) */
    uint32_t phase;                /* DS_SESSION_* */
    uint64_t elapsed_ns;
    int64_t setup_ns;              /* -1 until known */
    uint64_t transferred_bytes;    /* device bytes sent (source) or loaded (destination) */
    int64_t remaining_bytes;       /* -1 unknown */
    uint64_t iterations;
    double bandwidth_bytes_per_sec; /* 0: unknown */
    int64_t expected_downtime_ns;  /* -1 unknown */
    int64_t downtime_ns;           /* -1 until measured */
} ds_stats;

/* The final report (valid once ds_*_wait returned a final result). */
typedef struct ds_report {
    uint32_t struct_size;          /* in: sizeof(ds_report) */
    int32_t completed;             /* 1: byte-exact, handed over */
    int32_t error_code;            /* DS_ERR_*; DS_OK when completed */
    uint32_t switchover_reason;    /* DS_REASON_* */
    int32_t converged;             /* 1, 0, or -1 unknown */
    int32_t cancelled_after_commit;
    int32_t digests_verified;      /* 1: every device's digest is equal at both ends */
    uint32_t devices;
    uint64_t total_ns;
    uint64_t setup_ns;
    int64_t downtime_ns;           /* -1: none measured */
    int64_t expected_downtime_ns;  /* -1: none */
    uint64_t downtime_limit_ns;
    uint64_t iterations;
    uint64_t precopy_bytes;
    uint64_t stopcopy_bytes;
    uint64_t wire_bytes;
    uint32_t protection;           /* DS_PROTECTION_* (ABI 1.1; a 1.0 caller's struct_size stops before it) */
} ds_report;

/* ---------------------------------------------------------------------------------------- */
/* Source                                                                                    */

typedef struct ds_source ds_source;

/* A source for `count` devices (borrowed: they must outlive the source) with `opts` (copied). */
ds_source *ds_source_new(ds_device *const *devices, size_t count, const ds_options *opts, ds_error **err);
/* Starts migrating to the destination at "HOST:PORT" on library threads and returns at once.
 * `on_event` (may be NULL) gets every event with `user`. Once per source. */
int ds_source_connect(ds_source *src, const char *host_port, ds_event_fn on_event, void *user, ds_error **err);
/* Like ds_source_connect over sockets the VMM already connected, one per connection, channel 0
 * first. The library takes the fds (it closes them when the session ends, also on failure). */
int ds_source_attach_fds(ds_source *src, const int *fds, size_t count, ds_event_fn on_event, void *user, ds_error **err);
/* Waits up to `timeout_ns` (UINT64_MAX: forever) for the session to end. Returns 0 when it
 * completed, -1 when it failed (`err` says why), 1 when it is still running. */
int ds_source_wait(ds_source *src, uint64_t timeout_ns, ds_error **err);
/* With external switchover: switch over after the current round. Returns 0. */
int ds_source_switchover(ds_source *src);
/* Bytes the VMM itself moves during the downtime (its RAM): added to the prediction. */
int ds_source_set_external_pending(ds_source *src, uint64_t bytes);
/* Cancels: before commit the session fails with DS_ERR_CANCELLED and the devices run again on
 * the source; returns 1. After commit it is too late: returns 0 and the handover completes. */
int ds_source_cancel(ds_source *src);
/* A live snapshot into `out` (set out->struct_size first). */
int ds_source_stats(const ds_source *src, ds_stats *out);
/* The final report into `out` (set out->struct_size first); -1 while running. */
int ds_source_report(const ds_source *src, ds_report *out);
/* Cancels a running session, joins every library thread, frees the source. */
void ds_source_free(ds_source *src);

/* ---------------------------------------------------------------------------------------- */
/* Destination                                                                               */

typedef struct ds_dest ds_dest;

/* A destination for `count` devices (borrowed; each in RESUMING) with `opts` (copied). */
ds_dest *ds_dest_new(ds_device *const *devices, size_t count, const ds_options *opts, ds_error **err);
/* Binds "HOST:PORT" (port 0 picks one, stored in *bound_port when not NULL), then receives one
 * migration on library threads; returns once listening. */
int ds_dest_listen(ds_dest *dst, const char *host_port, uint16_t *bound_port, ds_event_fn on_event, void *user, ds_error **err);
/* Like ds_dest_listen over sockets the VMM already holds, one per connection of the source's
 * session. The library takes the fds. */
int ds_dest_attach_fds(ds_dest *dst, const int *fds, size_t count, ds_event_fn on_event, void *user, ds_error **err);
/* As ds_source_wait. */
int ds_dest_wait(ds_dest *dst, uint64_t timeout_ns, ds_error **err);
/* With a resume hold: lets the devices run once the commit is in. Returns 0; -1 before listen
 * or attach_fds. */
int ds_dest_resume(ds_dest *dst);
/* Cancels before commit (the devices never run; returns 1); after it, returns 0; -1 before
 * listen or attach_fds. */
int ds_dest_cancel(ds_dest *dst);
/* A live snapshot (set out->struct_size first). */
int ds_dest_stats(const ds_dest *dst, ds_stats *out);
/* The final report (set out->struct_size first); -1 while running. */
int ds_dest_report(const ds_dest *dst, ds_report *out);
/* Cancels a running session, joins every library thread, frees the destination. */
void ds_dest_free(ds_dest *dst);

#ifdef __cplusplus
}
#endif
#endif /* DEVICESTREAM_H */
