/* flushdelay: an LD_PRELOAD library that makes every cache flush slower, and counts them.
 *
 * Simulates a disk whose cache flush costs FLUSHDELAY_US microseconds more than this one's,
 * as on a network block device where independent flushes run in parallel: each call to
 * fsync, fdatasync, syncfs, sync, msync(MS_SYNC) or sync_file_range(..WAIT_AFTER) runs the
 * real one, then sleeps FLUSHDELAY_US in the calling thread only. Every call is counted, by
 * kind, in a shared file named by FLUSHDELAY_COUNTERS (made by the bench: SLOTS 64-bit
 * counters, mapped MAP_SHARED and added to atomically, so the count survives processes that
 * end with _exit or a signal). Without the variables it only passes calls through.
 * The real call's result and errno are returned unchanged. Built by bench/flushshim.py:
 *     gcc -O2 -shared -fPIC -o flushdelay.so flushdelay.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

enum { FSYNC, FDATASYNC, SYNCFS, SYNC, MSYNC, SYNC_FILE_RANGE, SLOTS };

static uint64_t *counters;  /* SLOTS counters in the shared file, or NULL */
static long delay_ns;
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_syncfs)(int);
static void (*real_sync)(void);
static int (*real_msync)(void *, size_t, int);
static int (*real_sync_file_range)(int, off_t, off_t, unsigned int);

static void resolve(void) {
    real_fsync = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    real_syncfs = (int (*)(int))dlsym(RTLD_NEXT, "syncfs");
    real_sync = (void (*)(void))dlsym(RTLD_NEXT, "sync");
    real_msync = (int (*)(void *, size_t, int))dlsym(RTLD_NEXT, "msync");
    real_sync_file_range =
        (int (*)(int, off_t, off_t, unsigned int))dlsym(RTLD_NEXT, "sync_file_range");
}

/* A flush called from another library's constructor, before ours ran, still works. */
#define REAL(name) (real_##name != NULL ? real_##name : (resolve(), real_##name))

__attribute__((constructor)) static void flushdelay_init(void) {
    resolve();
    const char *us = getenv("FLUSHDELAY_US");
    if (us != NULL)
        delay_ns = strtol(us, NULL, 10) * 1000L;
    const char *path = getenv("FLUSHDELAY_COUNTERS");
    if (path == NULL || *path == '\0')
        return;
    int saved = errno;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd >= 0) {
        void *map = mmap(NULL, SLOTS * sizeof(uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (map != MAP_FAILED)
            counters = map;
        close(fd);
    }
    errno = saved;
}

/* After a flush: count it and wait; errno as the real call left it. */
static void flushed(int slot) {
    int saved = errno;
    if (counters != NULL)
        __atomic_fetch_add(&counters[slot], 1, __ATOMIC_RELAXED);
    if (delay_ns > 0) {
        struct timespec left = {delay_ns / 1000000000L, delay_ns % 1000000000L};
        while (nanosleep(&left, &left) == -1 && errno == EINTR)
            ;
    }
    errno = saved;
}

int fsync(int fd) {
    int rc = REAL(fsync)(fd);
    flushed(FSYNC);
    return rc;
}

int fdatasync(int fd) {
    int rc = REAL(fdatasync)(fd);
    flushed(FDATASYNC);
    return rc;
}

int syncfs(int fd) {
    int rc = REAL(syncfs)(fd);
    flushed(SYNCFS);
    return rc;
}

void sync(void) {
    REAL(sync)();
    flushed(SYNC);
}

int msync(void *addr, size_t length, int flags) {
    int rc = REAL(msync)(addr, length, flags);
    if (flags & MS_SYNC)
        flushed(MSYNC);
    return rc;
}

int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags) {
    int rc = REAL(sync_file_range)(fd, offset, nbytes, flags);
    if (flags & SYNC_FILE_RANGE_WAIT_AFTER)
        flushed(SYNC_FILE_RANGE);
    return rc;
}
