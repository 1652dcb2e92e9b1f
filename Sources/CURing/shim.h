// liburing for Swift.
// DESIGN.md's environment notes suggest `#define _GNU_SOURCE 1` first. With Swift 6.3's Glibc
// module on Debian 12 that is what *causes* the clash: `_GNU_SOURCE` renames `fd_set`'s field
// (`fds_bits` vs `__fds_bits`) and Clang then refuses the two definitions. Leaving it undefined
// matches the Glibc module and liburing 2.3's header still compiles (checked: swift build).
#ifndef DEVSTREAM_CURING_SHIM_H
#define DEVSTREAM_CURING_SHIM_H
// System headers first, with the default feature macros Swift's Glibc module is built with;
// liburing.h then cannot switch on _XOPEN_SOURCE/_GNU_SOURCE for them (it tries to).
#include <errno.h>
#include <signal.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <liburing.h>

/// The file system type of `fd` (statfs f_type, e.g. TMPFS_MAGIC), or 0 when fstatfs fails.
/// Swift's Glibc module does not export <sys/vfs.h>.
static inline unsigned long ds_fs_type(int fd) {
    struct statfs fs;
    return fstatfs(fd, &fs) == 0 ? (unsigned long)fs.f_type : 0;
}

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
