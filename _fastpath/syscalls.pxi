# C declarations of the system calls and structures the compiled twin uses
# (included by core.pyx). No Python twin: _py uses the socket/os modules.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t

cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void *buf, size_t count)
    ssize_t write(int fd, const void *buf, size_t count)

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t writev(int fd, const iovec *iov, int iovcnt)

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        unsigned short sin_family
        unsigned short sin_port
        in_addr sin_addr
    uint32_t htonl(uint32_t)
    uint32_t ntohl(uint32_t)
    uint16_t htons(uint16_t)
    uint16_t ntohs(uint16_t)

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    struct timespec:
        pass
    cmsghdr *CMSG_FIRSTHDR(msghdr *m)
    cmsghdr *CMSG_NXTHDR(msghdr *m, cmsghdr *c)
    unsigned char *CMSG_DATA(cmsghdr *c)
    size_t CMSG_LEN(size_t n)
    size_t CMSG_SPACE(size_t n)
    int sendmmsg(int sockfd, mmsghdr *msgvec, unsigned int vlen, int flags)
    int recvmmsg(int sockfd, mmsghdr *msgvec, unsigned int vlen, int flags, timespec *timeout)
    ssize_t sendto(int sockfd, const void *buf, size_t len, int flags,
                   const void *dest_addr, socklen_t addrlen)
    int AF_INET
    int MSG_DONTWAIT

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    short POLLIN

cdef extern from *:
    """
    #define UO_LITTLE_ENDIAN (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)
    #define uo_barrier() __sync_synchronize()
    /* per-peer counters shared by several queues' workers: no lost adds */
    #define uo_add(p, v) __atomic_fetch_add((p), (v), __ATOMIC_RELAXED)
    #include <time.h>
    static inline uint64_t uo_now_ns(void) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
    }
    """
    int UO_LITTLE_ENDIAN
    void uo_barrier() nogil
    void uo_add(uint64_t *p, uint64_t v) nogil
    uint64_t uo_now_ns() nogil

# io_uring batches of TUN reads (uring.h: liburing, or stubs without it).
cdef extern from "uring.h" nogil:
    ctypedef struct uo_ring:
        pass
    ctypedef struct uo_op:
        const iovec *iov
        int iovcnt
        int res
    int UO_URING_BUILT
    int UO_RING_ENTRIES
    int uo_ring_open(uo_ring **out)
    void uo_ring_close(uo_ring *r)
    int uo_ring_batch(uo_ring *r, int write, int fd, uo_op *ops, int n)

cdef extern from "<string.h>" nogil:
    char *strerror(int errnum)
