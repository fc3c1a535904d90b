/* Listening sockets. A Unix socket's stale file is removed only when it is
 * a socket, so a typo cannot delete a regular file; the socket is made
 * 0660 so only the daemon's user and group may talk to it. */
#include "daemon/listen.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#define LISTEN_BACKLOG 1024

static int listen_unix(const char *path, int *ret)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        struct stat st;
        mode_t old_umask;
        int fd, r;

        if (!*path || strlen(path) >= sizeof(sa.sun_path))
                return -EINVAL;
        memcpy(sa.sun_path, path, strlen(path) + 1);
        if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
                unlink(path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        old_umask = umask(0117);
        r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
        umask(old_umask);
        if (r < 0 || listen(fd, LISTEN_BACKLOG) < 0) {
                r = -errno;
                close(fd);
                return r;
        }
        *ret = fd;
        return 0;
}

/* Splits "host:port" or "[v6]:port"; *ret_port points into addr. */
static int split_host_port(const char *addr, char *host, size_t hostlen, const char **ret_port)
{
        const char *colon;
        size_t n;

        if (addr[0] == '[') {
                const char *close = strchr(addr, ']');

                if (!close || close[1] != ':')
                        return -EINVAL;
                n = (size_t)(close - addr - 1);
                addr++;
                colon = close + 1;
        } else {
                colon = strrchr(addr, ':');
                if (!colon)
                        return -EINVAL;
                n = (size_t)(colon - addr);
        }
        if (n == 0 || n >= hostlen || !colon[1])
                return -EINVAL;
        memcpy(host, addr, n);
        host[n] = '\0';
        *ret_port = colon + 1;
        return 0;
}

static int listen_inet(const char *addr, int *ret)
{
        struct addrinfo hints = {
                .ai_family = AF_UNSPEC,
                .ai_socktype = SOCK_STREAM,
                .ai_flags = AI_PASSIVE | AI_NUMERICSERV,
        };
        struct addrinfo *ai = NULL;
        const char *port;
        char host[256];
        int fd = -1, r, one = 1;

        r = split_host_port(addr, host, sizeof(host), &port);
        if (r < 0)
                return r;
        if (getaddrinfo(host, port, &hints, &ai) != 0 || !ai)
                return -EADDRNOTAVAIL;
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
                r = -errno;
                goto out;
        }
        /* A restart must not wait for the old connections' TIME_WAIT. */
        (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, LISTEN_BACKLOG) < 0) {
                r = -errno;
                close(fd);
                goto out;
        }
        *ret = fd;
        r = 0;
out:
        freeaddrinfo(ai);
        return r;
}

int listen_open(const char *addr, int *ret)
{
        if (strncmp(addr, "unix:", 5) == 0)
                return listen_unix(addr + 5, ret);
        return listen_inet(addr, ret);
}

int listen_inherited(int *ret)
{
        int n = sd_listen_fds(1);

        if (n <= 0)
                return n;
        if (n > 1)
                return -E2BIG;
        if (sd_is_socket(SD_LISTEN_FDS_START, AF_UNSPEC, SOCK_STREAM, 1) <= 0)
                return -ENOTSOCK;
        *ret = SD_LISTEN_FDS_START;
        return 1;
}

void listen_describe(int fd, char *buf, size_t len)
{
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        char host[INET6_ADDRSTRLEN];

        snprintf(buf, len, "fd %d", fd);
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
                return;
        if (ss.ss_family == AF_INET) {
                struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;

                inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
                snprintf(buf, len, "%s:%u", host, ntohs(s4->sin_port));
        } else if (ss.ss_family == AF_INET6) {
                struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;

                inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
                snprintf(buf, len, "[%s]:%u", host, ntohs(s6->sin6_port));
        } else if (ss.ss_family == AF_UNIX) {
                snprintf(buf, len, "unix:%s", ((struct sockaddr_un *)&ss)->sun_path);
        }
}
