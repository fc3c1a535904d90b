libfutured_a_SOURCES += \
	api/server.c api/server.h api/api.h \
	api/auth.c api/auth.h \
	api/metrics.c api/metrics.h \
	api/request.c api/request.h \
	api/routes.c api/routes.h \
	api/reply.c api/reply.h \
	api/strbuf.c api/strbuf.h \
	api/spec.c api/spec.h \
	api/hub.c api/hub.h \
	api/query.c api/query.h \
	api/stream.c api/wait.c \
	api/jobs.c api/batches.c api/misc.c
