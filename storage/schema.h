/* The database format and its migrations (the format itself is described at
 * the head of schema.c). */
#ifndef FUTURED_SCHEMA_H
#define FUTURED_SCHEMA_H

#include <sqlite3.h>

/* Brings db up to the newest schema this build knows, one transaction per
 * step. -EPROTO when the database was written by a newer futured. */
int schema_migrate(sqlite3 *db);
/* Only reads: 0 when this build knows db's schema (an empty file
 * included), -EPROTO when it is newer, -EBADMSG when db is no database or
 * another program's (see schema.c, version 3). */
int schema_check(sqlite3 *db);

#endif
