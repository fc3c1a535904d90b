EXTRA_DIST += bench/bench.py bench/README.md
bench: all
	$(PYTHON3) $(srcdir)/bench/bench.py --futured $(abs_top_builddir)/futured
.PHONY: bench
