libfutured_a_SOURCES += \
	daemon/config.c daemon/config.h \
	daemon/log.c daemon/log.h \
	daemon/listen.c daemon/listen.h \
	daemon/scheduler.c daemon/scheduler.h \
	daemon/limiter.c daemon/limiter.h \
	daemon/iopool.c daemon/iopool.h \
	daemon/procpool.c daemon/procpool.h \
	daemon/frame.c daemon/frame.h \
	daemon/worker.c daemon/worker.h \
	daemon/retention.c daemon/retention.h \
	daemon/watchdog.c daemon/watchdog.h
