/* The listening socket: made here, before any thread, and handed to the
 * HTTP server, so an inherited socket (systemd socket activation) and one
 * of our own look the same to it. */
#ifndef FUTURED_LISTEN_H
#define FUTURED_LISTEN_H

#include <stddef.h>

/* addr: "HOST:PORT", "[V6]:PORT" or "unix:PATH". Port 0 picks a free one.
 * *ret is a listening SOCK_CLOEXEC socket the caller owns. */
int listen_open(const char *addr, int *ret);

/* The socket systemd passed (LISTEN_FDS), checked to be a listening stream
 * socket: 1 and *ret set, 0 when none was passed, or a negative code. */
int listen_inherited(int *ret);

/* "127.0.0.1:7700", "[::1]:7700" or "unix:/run/futured.sock", for logs. */
void listen_describe(int fd, char *buf, size_t len);

#endif
