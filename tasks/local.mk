libfutured_a_SOURCES += \
	tasks/task.h tasks/ctx.c tasks/registry.c \
	tasks/args.c tasks/args.h \
	tasks/base64.c tasks/base64.h \
	tasks/exec.c tasks/exec.h \
	tasks/http.c tasks/http.h \
	tasks/jsontext.c tasks/jsontext.h \
	tasks/noop.c tasks/sleep.c tasks/sqrt_sum.c
