EXTRA_DIST += bench/bench.py bench/README.md
bench: all
	$(PYTHON3) $(srcdir)/bench/bench.py --only core,http --futured $(abs_top_builddir)/futured
.PHONY: bench
