#include "tests/unit/tempdb.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int tempdb_make(struct tempdb *t, const char *name)
{
        if ((size_t) snprintf(t->dir, sizeof(t->dir), "/tmp/%s.XXXXXX", name) >= sizeof(t->dir))
                return -ENAMETOOLONG;
        if (!mkdtemp(t->dir))
                return -errno;
        snprintf(t->path, sizeof(t->path), "%s/jobs.db", t->dir);
        return 0;
}

int tempdb_remove(struct tempdb *t)
{
        DIR *d = opendir(t->dir);
        struct dirent *e;
        int r = 0;

        if (!d)
                return -errno;
        while ((e = readdir(d)))
                if (e->d_type != DT_DIR && unlinkat(dirfd(d), e->d_name, 0) < 0 && r == 0)
                        r = -errno;
        closedir(d);
        if (rmdir(t->dir) < 0 && r == 0)
                r = -errno;
        return r;
}
