libfutured_a_SOURCES += \
	storage/batch.c storage/batch.h \
	storage/checkpoint.c storage/checkpoint.h \
	storage/histogram.c storage/histogram.h \
	storage/job.c storage/job.h \
	storage/schema.c storage/schema.h \
	storage/store.c storage/store.h storage/store-internal.h \
	storage/writer.c storage/writer.h
