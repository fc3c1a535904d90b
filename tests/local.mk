# Unit tests (cmocka) mirror the tree; end-to-end tests start the built
# daemon on a free loopback port and speak HTTP to it.
UNIT_TESTS = \
	tests/unit/test_store \
	tests/unit/test_spec \
	tests/unit/test_scheduler \
	tests/unit/test_pools \
	tests/unit/test_config \
	tests/unit/test_http \
	tests/unit/test_exec \
	tests/unit/test_hub \
	tests/unit/test_limiter \
	tests/unit/test_histogram \
	tests/unit/test_auth

check_PROGRAMS += $(UNIT_TESTS)
UNIT_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS) -DFUTURED_BIN=\"$(abs_top_builddir)/futured\"
UNIT_LDADD = libfutured.a $(DEPS_LIBS) $(CMOCKA_LIBS)
# the temporary store directory of the tests that open one
TEMPDB = tests/unit/tempdb.c tests/unit/tempdb.h

tests_unit_test_store_SOURCES = tests/unit/test_store.c $(TEMPDB)
tests_unit_test_store_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_store_LDADD = $(UNIT_LDADD)
tests_unit_test_spec_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_spec_LDADD = $(UNIT_LDADD)
tests_unit_test_scheduler_SOURCES = tests/unit/test_scheduler.c $(TEMPDB)
tests_unit_test_scheduler_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_scheduler_LDADD = $(UNIT_LDADD)
tests_unit_test_pools_SOURCES = tests/unit/test_pools.c $(TEMPDB)
tests_unit_test_pools_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_pools_LDADD = $(UNIT_LDADD)
tests_unit_test_config_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_config_LDADD = $(UNIT_LDADD)
tests_unit_test_http_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_http_LDADD = $(UNIT_LDADD)
tests_unit_test_exec_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_exec_LDADD = $(UNIT_LDADD)
tests_unit_test_hub_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_hub_LDADD = $(UNIT_LDADD)
tests_unit_test_limiter_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_limiter_LDADD = $(UNIT_LDADD)
tests_unit_test_histogram_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_histogram_LDADD = $(UNIT_LDADD)
tests_unit_test_auth_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_auth_LDADD = $(UNIT_LDADD)

E2E_TESTS = \
	tests/e2e/test_jobs.py \
	tests/e2e/test_cpu.py \
	tests/e2e/test_durability.py \
	tests/e2e/test_concurrency.py \
	tests/e2e/test_bad_requests.py \
	tests/e2e/test_lifecycle.py \
	tests/e2e/test_exec.py \
	tests/e2e/test_batches.py \
	tests/e2e/test_streams.py \
	tests/e2e/test_wait.py \
	tests/e2e/test_http.py \
	tests/e2e/test_ops.py \
	tests/e2e/test_openai.py \
	tests/e2e/test_systemd.py

TESTS += $(UNIT_TESTS) $(E2E_TESTS)
EXTRA_DIST += $(E2E_TESTS) tests/e2e/harness.py tests/e2e/fakeapi.py
TEST_EXTENSIONS = .py
PY_LOG_COMPILER = $(PYTHON3)
AM_TESTS_ENVIRONMENT = \
	FUTURED_BIN=$(abs_top_builddir)/futured; export FUTURED_BIN; \
	PYTHONPATH=$(abs_top_srcdir)/tests/e2e; export PYTHONPATH; \
	PYTHONDONTWRITEBYTECODE=1; export PYTHONDONTWRITEBYTECODE;
