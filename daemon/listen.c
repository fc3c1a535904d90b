/* Listening sockets. A Unix socket's file is replaced only when it is a
 * stale socket (a connect() to it is refused), so neither a typo nor a
 * second instance can take another's path; it is created 0660 (through the
 * umask, so there is no moment it is wider; we run before any thread) so
 * only the daemon's user and group may talk to it. */
#include "daemon/listen.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#define LISTEN_BACKLOG 1024

/* -EADDRINUSE when path is a socket something listens on, or a file that
 * is not a socket; 0 once nothing is left at path. */
static int unix_remove_stale(const struct sockaddr_un *sa)
{
        struct stat st;
        int fd, r;

        if (lstat(sa->sun_path, &st) < 0)
                return errno == ENOENT ? 0 : -errno;
        if (!S_ISSOCK(st.st_mode))
                return -EADDRINUSE;
        /* Non-blocking: a listener with a full backlog (EAGAIN) is alive. */
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;
        r = connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) < 0 ? -errno : 0;
        close(fd);
        if (r == 0 || r == -EAGAIN)
                return -EADDRINUSE;
        if (r == -ENOENT)
                return 0;
        if (r != -ECONNREFUSED)
                return r;
        if (unlink(sa->sun_path) < 0 && errno != ENOENT)
                return -errno;
        return 0;
}

static int listen_unix(const char *path, int *ret)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        mode_t old_umask;
        int fd, r;

        if (!*path || strlen(path) >= sizeof(sa.sun_path))
                return -EINVAL;
        memcpy(sa.sun_path, path, strlen(path) + 1);
        r = unix_remove_stale(&sa);
        if (r < 0)
                return r;
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

/* Splits "host:port" or "[v6]:port"; *ret_port points into addr. The port
 * is checked here: getaddrinfo() takes "99999" and wraps it. */
static int split_host_port(const char *addr, char *host, size_t hostlen, const char **ret_port)
{
        const char *colon;
        size_t n, digits;

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
        digits = strspn(colon + 1, "0123456789");
        if (n == 0 || n >= hostlen || digits == 0 || digits > 5 || colon[1 + digits] ||
            strtol(colon + 1, NULL, 10) > 65535)
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

static bool is_listening_stream(int fd)
{
        return sd_is_socket_inet(fd, AF_UNSPEC, SOCK_STREAM, 1, 0) > 0 ||
               sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) > 0;
}

int listen_inherited(int *ret, size_t n)
{
        int count = sd_listen_fds(1);

        if (count <= 0)
                return count;
        if ((size_t)count > n)
                return -E2BIG;
        for (int i = 0; i < count; i++)
                if (!is_listening_stream(SD_LISTEN_FDS_START + i))
                        return -ENOTSOCK;
        for (int i = 0; i < count; i++)
                ret[i] = SD_LISTEN_FDS_START + i;
        return count;
}

struct listen_address {
        struct sockaddr_storage sa;
        socklen_t len;
};

static void address_describe(const struct listen_address *a, char *buf, size_t len)
{
        char host[INET6_ADDRSTRLEN];

        if (a->sa.ss_family == AF_INET) {
                const struct sockaddr_in *s4 = (const struct sockaddr_in *)&a->sa;

                inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
                snprintf(buf, len, "%s:%u", host, ntohs(s4->sin_port));
        } else if (a->sa.ss_family == AF_INET6) {
                const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&a->sa;

                inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
                snprintf(buf, len, "[%s]:%u", host, ntohs(s6->sin6_port));
        } else if (a->sa.ss_family == AF_UNIX && a->len > offsetof(struct sockaddr_un, sun_path)) {
                const struct sockaddr_un *su = (const struct sockaddr_un *)&a->sa;
                int n = (int)(a->len - offsetof(struct sockaddr_un, sun_path));

                /* An abstract name starts with a NUL, shown as '@'. */
                if (su->sun_path[0])
                        snprintf(buf, len, "unix:%.*s", n, su->sun_path);
                else
                        snprintf(buf, len, "unix:@%.*s", n - 1, su->sun_path + 1);
        } else {
                snprintf(buf, len, "a socket of family %d", a->sa.ss_family);
        }
}

void listen_describe(int fd, char *buf, size_t len)
{
        struct listen_address a = { .len = sizeof(a.sa) };

        if (getsockname(fd, (struct sockaddr *)&a.sa, &a.len) < 0)
                snprintf(buf, len, "fd %d", fd);
        else
                address_describe(&a, buf, len);
}
