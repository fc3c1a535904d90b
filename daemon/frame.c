/* Framing over a blocking stream socket. Partial sends and reads are looped
 * over and EINTR retried, so a caller sees a message whole or an error. */
#include "daemon/frame.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>

static int frame_send(int fd, const void *buf, size_t len, int flags)
{
        uint8_t hdr[4];
        struct iovec iov[2];
        struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 2 };

        if (len > FRAME_MAX)
                return -EMSGSIZE;
        hdr[0] = (uint8_t)(len >> 24);
        hdr[1] = (uint8_t)(len >> 16);
        hdr[2] = (uint8_t)(len >> 8);
        hdr[3] = (uint8_t)len;
        iov[0] = (struct iovec){ .iov_base = hdr, .iov_len = sizeof(hdr) };
        iov[1] = (struct iovec){ .iov_base = (void *)buf, .iov_len = len };

        while (mh.msg_iovlen > 0) {
                ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL | flags);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
                }
                while (mh.msg_iovlen > 0 && (size_t)n >= mh.msg_iov->iov_len) {
                        n -= (ssize_t)mh.msg_iov->iov_len;
                        mh.msg_iov++;
                        mh.msg_iovlen--;
                }
                if (mh.msg_iovlen > 0) {
                        mh.msg_iov->iov_base = (uint8_t *)mh.msg_iov->iov_base + n;
                        mh.msg_iov->iov_len -= (size_t)n;
                }
        }
        return 0;
}

int frame_write(int fd, const void *buf, size_t len)
{
        return frame_send(fd, buf, len, 0);
}

int frame_try_write(int fd, const void *buf, size_t len)
{
        return frame_send(fd, buf, len, MSG_DONTWAIT);
}

/* 0 when len bytes were read; -EPIPE on end of file before the first byte,
 * -EPROTO after it. */
static int read_all(int fd, void *buf, size_t len)
{
        size_t done = 0;

        while (done < len) {
                ssize_t n = read(fd, (uint8_t *)buf + done, len - done);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        return done == 0 ? -EPIPE : -EPROTO;
                done += (size_t)n;
        }
        return 0;
}

int frame_set_read_timeout(int fd, double seconds)
{
        struct timeval tv = {
                .tv_sec = (time_t)seconds,
                .tv_usec = (suseconds_t)((seconds - (double)(time_t)seconds) * 1e6),
        };

        return setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ? -errno : 0;
}

int frame_read(int fd, char **ret, size_t *ret_len)
{
        uint8_t hdr[4];
        size_t len;
        char *buf;
        int r;

        r = read_all(fd, hdr, sizeof(hdr));
        if (r < 0)
                return r;
        len = (size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 | (size_t)hdr[2] << 8 | hdr[3];
        if (len > FRAME_MAX)
                return -EMSGSIZE;

        buf = malloc(len + 1);
        if (!buf)
                return -ENOMEM;
        r = read_all(fd, buf, len);
        if (r < 0) {
                free(buf);
                /* The header was there, so any end of file is mid-message. */
                return r == -EPIPE ? -EPROTO : r;
        }
        buf[len] = '\0';
        *ret = buf;
        *ret_len = len;
        return 0;
}
