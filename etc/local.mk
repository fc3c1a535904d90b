dist_sysconf_DATA = etc/futured.conf
EXTRA_DIST += etc/futured.service etc/futured.socket
