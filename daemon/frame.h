/* Length-prefixed messages over a stream socket, used on both ends of the
 * daemon-worker socket pair: a 4-byte big-endian length, then that many
 * bytes of payload. The length is capped so neither side can be made to
 * allocate without bound. */
#ifndef FUTURED_FRAME_H
#define FUTURED_FRAME_H

#include <stddef.h>

#define FRAME_MAX (16u * 1024 * 1024)

/* Writes the whole message or fails: 0, -EMSGSIZE when len > FRAME_MAX, or
 * the send error (-EPIPE when the peer is gone; never raises SIGPIPE). */
int frame_write(int fd, const void *buf, size_t len);

/* Like frame_write() but never blocks: -EAGAIN when the socket cannot take
 * the whole message now, in which case part of it may have been sent and
 * the stream is no longer usable: for a last word to a peer that is about
 * to be killed if it does not answer. */
int frame_try_write(int fd, const void *buf, size_t len);

/* Reads one message. 0 with *ret (malloc'd, the caller's, NUL-terminated
 * past *ret_len) and *ret_len; an empty message is valid. -EPIPE: the peer
 * closed the socket between messages; -EPROTO: it closed mid-message;
 * -EMSGSIZE: the announced length exceeds FRAME_MAX; -EAGAIN: fd's read
 * timeout passed with nothing coming; else the read error. */
int frame_read(int fd, char **ret, size_t *ret_len);

/* Bounds the silence each of frame_read()'s reads on fd waits out, for a
 * reader that polls for a message's start and must not block forever on a
 * peer stalled in the middle of one. 0 or the setsockopt() error. */
int frame_set_read_timeout(int fd, double seconds);

#endif
