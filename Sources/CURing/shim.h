// liburing for Swift. `_GNU_SOURCE` must come before any libc header, or liburing's
// `fd_set`/`sigset_t` definitions clash with Glibc's module (DESIGN.md, environment facts).
#ifndef DEVSTREAM_CURING_SHIM_H
#define DEVSTREAM_CURING_SHIM_H
#define _GNU_SOURCE 1
#include <liburing.h>
#include <errno.h>
#include <sys/socket.h>
#include <sys/uio.h>

// Macros Swift cannot import, as functions.
static inline unsigned char ds_sqe_flag_io_link(void) { return IOSQE_IO_LINK; }
static inline unsigned char ds_sqe_flag_fixed_file(void) { return IOSQE_FIXED_FILE; }
static inline unsigned ds_setup_single_issuer(void) {
#ifdef IORING_SETUP_SINGLE_ISSUER
    return IORING_SETUP_SINGLE_ISSUER;
#else
    return 0;
#endif
}
static inline unsigned ds_setup_defer_taskrun(void) {
#ifdef IORING_SETUP_DEFER_TASKRUN
    return IORING_SETUP_DEFER_TASKRUN;
#else
    return 0;
#endif
}
static inline unsigned ds_setup_coop_taskrun(void) {
#ifdef IORING_SETUP_COOP_TASKRUN
    return IORING_SETUP_COOP_TASKRUN;
#else
    return 0;
#endif
}
#endif
