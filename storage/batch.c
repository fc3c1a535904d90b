/* The batch record (storage/batch.h); its one owned string is released by
 * batch_free(). */
#include "storage/batch.h"

#include <stdlib.h>

struct batch *batch_new(void)
{
        return calloc(1, sizeof(struct batch));
}

void batch_free(struct batch *b)
{
        if (!b)
                return;
        free(b->limits);
        free(b);
}
