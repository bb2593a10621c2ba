/* io_uring for the compiled twin's TUN I/O, on liburing (linked
 * statically by setup.py when liburing.a is there: UO_HAVE_LIBURING).
 *
 * One ring per direction, used by that direction only (a worker thread may
 * own it). uo_ring_batch() queues n reads or writes of one fd, each with
 * RWF_NOWAIT (so none ever waits or goes to a kernel worker: a TUN with
 * nothing queued answers -EAGAIN at once, like a non-blocking read()),
 * submits them with ONE io_uring_enter and collects every completion: one
 * kernel entry for up to a batch of TUN packets. The kernel issues the
 * queued requests in order, so the packets keep their order.
 *
 * Without liburing the functions exist and report -ENOSYS, and the data
 * plane keeps read()/write().
 */
#ifndef UO_URING_H
#define UO_URING_H

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#define UO_RING_ENTRIES 64      /* requests per submission (wire.BATCH) */

typedef struct {
    const struct iovec *iov;    /* in: the buffers */
    int iovcnt;                 /* in */
    int res;                    /* out: bytes, or -errno */
} uo_op;

#ifdef UO_HAVE_LIBURING
#include <liburing.h>

#define UO_URING_BUILT 1

typedef struct io_uring uo_ring;

/* A new ring in *out; 0, or -errno (ENOSYS, EPERM under seccomp, ...). */
static int uo_ring_open(uo_ring **out)
{
    uo_ring *r = calloc(1, sizeof(*r));
    int rc;
    *out = NULL;
    if (r == NULL)
        return -ENOMEM;
    rc = io_uring_queue_init(UO_RING_ENTRIES, r, 0);
    if (rc < 0) {
        free(r);
        return rc;
    }
    *out = r;
    return 0;
}

static void uo_ring_close(uo_ring *r)
{
    if (r != NULL) {
        io_uring_queue_exit(r);
        free(r);
    }
}

/* ops[0..n) as reads (write = 0) or writes of fd, in order, RWF_NOWAIT;
 * every ops[i].res filled. 0, or -errno when the ring itself failed (then
 * no request of this call was submitted, or all completed: callers may
 * fall back to read()/write() for all of them only in the first case,
 * which is the only one reported). */
static int uo_ring_batch(uo_ring *r, int write, int fd, uo_op *ops, int n)
{
    struct io_uring_sqe *sqe;
    struct io_uring_cqe *cqe;
    int i, rc, seen = 0;
    if (n > UO_RING_ENTRIES)
        return -EINVAL;
    for (i = 0; i < n; i++) {
        sqe = io_uring_get_sqe(r);
        if (sqe == NULL)        /* cannot happen: the ring is drained each call */
            return -EBUSY;
        if (write)
            io_uring_prep_writev(sqe, fd, ops[i].iov, ops[i].iovcnt, (__u64)-1);
        else if (ops[i].iovcnt == 1)
            io_uring_prep_read(sqe, fd, ops[i].iov[0].iov_base,
                               (unsigned)ops[i].iov[0].iov_len, (__u64)-1);
        else
            io_uring_prep_readv(sqe, fd, ops[i].iov, ops[i].iovcnt, (__u64)-1);
        sqe->rw_flags = RWF_NOWAIT;
        sqe->user_data = (__u64)i;
        ops[i].res = -ECANCELED;
    }
    do {
        rc = io_uring_submit_and_wait(r, (unsigned)n);
    } while (rc == -EINTR);
    if (rc < 0) {
        /* nothing submitted: take the SQEs back by submitting... nothing
         * else can clear them, so report and let the caller drop the ring */
        return rc;
    }
    while (seen < n) {
        rc = io_uring_wait_cqe(r, &cqe);
        if (rc == -EINTR)
            continue;
        if (rc < 0)
            return 0;           /* the rest stay -ECANCELED: counted as errors */
        if (cqe->user_data < (__u64)n)
            ops[cqe->user_data].res = cqe->res;
        io_uring_cqe_seen(r, cqe);
        seen++;
    }
    return 0;
}

#else   /* built without liburing */

#define UO_URING_BUILT 0

typedef struct { int unused; } uo_ring;

static int uo_ring_open(uo_ring **out) { *out = NULL; return -ENOSYS; }
static void uo_ring_close(uo_ring *r) { (void)r; }
static int uo_ring_batch(uo_ring *r, int write, int fd, uo_op *ops, int n)
{
    (void)r; (void)write; (void)fd; (void)ops; (void)n;
    return -ENOSYS;
}

#endif
#endif
