libfutured_a_SOURCES += \
	tasks/task.h tasks/ctx.c tasks/registry.c \
	tasks/args.c tasks/args.h \
	tasks/noop.c tasks/sleep.c tasks/sqrt_sum.c
