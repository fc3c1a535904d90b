# The configuration goes to $(sysconfdir)/futured/, where futured.service
# and the man pages look for it.
futuredconfdir = $(sysconfdir)/futured
dist_futuredconf_DATA = etc/futured.conf
EXTRA_DIST += etc/futured.service etc/futured.socket
