/* The listening sockets: made here, before any thread, and handed to the
 * HTTP server, so inherited sockets (systemd socket activation) and one of
 * our own look the same to it. */
#ifndef FUTURED_LISTEN_H
#define FUTURED_LISTEN_H

#include <stddef.h>
#include <sys/socket.h>

/* Inherited sockets taken at most; more is refused. */
#define LISTEN_MAX 16

/* addr: "HOST:PORT", "[V6]:PORT" or "unix:PATH". Port 0 picks a free one.
 * A Unix socket is made 0660 in a directory that must exist; a file left
 * at PATH is replaced only when it is a socket nobody listens on. *ret is
 * a listening SOCK_CLOEXEC socket the caller owns. */
int listen_open(const char *addr, int *ret);

/* The sockets systemd passed (LISTEN_FDS, LISTEN_PID), each checked to be
 * a listening stream socket, TCP or Unix: their count (0 when none was
 * passed) with ret[0..count) set and owned by the caller, -E2BIG past n,
 * or -ENOTSOCK when one is not such a socket. The LISTEN_* variables are
 * unset, so no child inherits them. */
int listen_inherited(int *ret, size_t n);

/* "127.0.0.1:7700", "[::1]:7700" or "unix:/run/futured.sock", for logs. */
void listen_describe(int fd, char *buf, size_t len);

#endif
