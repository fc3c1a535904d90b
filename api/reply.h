/* Answers: JSON bodies with Content-Type application/json, errors as
 * {"error":{"code","message"}} with a stable code, and the job as the API
 * shows it. Every reply_* that takes a request queues the answer on it and
 * returns MHD's verdict; call them from the handler only. */
#ifndef FUTURED_API_REPLY_H
#define FUTURED_API_REPLY_H

#include <stdint.h>
#include <jansson.h>
#include <microhttpd.h>

#include "api/strbuf.h"
#include "storage/batch.h"
#include "storage/job.h"

struct request;

/* The media type of every body sent, and of the bodies accepted. */
#define REPLY_JSON_TYPE "application/json"

/* RFC 3339 UTC with milliseconds, "2026-11-25T04:20:07.123Z". */
#define REPLY_TIME_MAX 32
void reply_time(char buf[static REPLY_TIME_MAX], int64_t ms);

/* The job object in three parts, so a submission can render its middle
 * before the id and creation time exist: open gives {"id":"N", (its
 * length returned), fields "task" to "seq", close the times and the brace. */
#define REPLY_OPEN_MAX 40
size_t reply_job_open(char buf[static REPLY_OPEN_MAX], int64_t id);
void reply_job_fields(struct strbuf *b, const struct job *j);
void reply_job_close(struct strbuf *b, int64_t created_at, int64_t started_at,
                     int64_t finished_at);
void reply_job(struct strbuf *b, const struct job *j);

/* Sends body (emptied) with an optional extra header (NULL for none). */
enum MHD_Result reply_body(struct request *req, unsigned status, struct strbuf *body,
                           const char *header, const char *value);
/* Sends v, whose reference is taken; NULL (allocation failed) sends 500. */
enum MHD_Result reply_value(struct request *req, unsigned status, json_t *v);
/* The batch as the API shows it: {"id","size","counts":{state: n},"done",
 * "priority","created_at","finished_at"}. */
void reply_batch(struct strbuf *b, const struct batch *bt);
enum MHD_Result reply_job_answer(struct request *req, unsigned status, const struct job *j);
enum MHD_Result reply_empty(struct request *req, unsigned status);
enum MHD_Result reply_error(struct request *req, unsigned status, const char *code,
                            const char *fmt, ...) __attribute__((format(printf, 4, 5)));
enum MHD_Result reply_error_with(struct request *req, unsigned status, const char *header,
                                 const char *value, const char *code, const char *fmt, ...)
        __attribute__((format(printf, 6, 7)));
/* The answer to a write that failed with r: 503 store_unavailable (-EIO),
 * 503 shutting_down (-ESHUTDOWN), else 500 "<what> failed: ...". */
enum MHD_Result reply_write_error(struct request *req, int r, const char *what);
/* The answer to a committed delete of the path's `what` ("job", "batch")
 * that ended with result: 204, 404, 409 not_finished, 503 or 500. */
enum MHD_Result reply_deleted(struct request *req, int result, const char *what);
/* 500 for a failed store read (r < 0). */
enum MHD_Result reply_store_error(struct request *req, int r);

#endif
