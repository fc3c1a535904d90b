#!/usr/bin/env bash
# The two commands of a fresh Debian 12 machine:
#   ./build.sh start   install what is needed, build, run futured on its defaults
#   ./build.sh check   install what is needed, build, pass the whole test suite:
#                      make check, again under ASan+UBSan, then make distcheck
#                      and the Debian package (make deb)
set -euo pipefail
cd "$(dirname "$0")"

DEPS=(build-essential autoconf automake pkg-config python3 curl
      libmicrohttpd-dev libjansson-dev libsqlite3-dev libsystemd-dev
      libcurl4-openssl-dev libinih-dev libcmocka-dev debhelper dpkg-dev openssl)
JOBS=$(nproc)

install_deps() {
        local missing=()
        for p in "${DEPS[@]}"; do
                dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
        done
        [ ${#missing[@]} -eq 0 ] && return 0
        echo "== installing: ${missing[*]}"
        local sudo=()
        [ "$(id -u)" -eq 0 ] || sudo=(sudo)
        "${sudo[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# build DIR [configure flags...]
build() {
        local dir=$1; shift
        [ -x configure ] || autoreconf -fi
        mkdir -p "$dir"
        (cd "$dir" && ../configure -q --enable-werror "$@" && make -s -j"$JOBS")
}

# Prints "N passed, N failed" over every test log under the given dirs.
summary() {
        local pass fail
        pass=$(cat "$@" 2>/dev/null | grep -c '^:test-result: PASS' || true)
        fail=$(cat "$@" 2>/dev/null | grep -c -E '^:test-result: (FAIL|ERROR|XPASS)' || true)
        echo "$pass passed, $fail failed"
}

check_in() {
        local dir=$1
        echo "== make check in $dir"
        if ! (cd "$dir" && make -s -j"$JOBS" check); then
                cat "$dir"/test-suite.log >&2 || true
                return 1
        fi
}

case "${1:-}" in
start)
        install_deps
        build build
        exec ./build/futured
        ;;
check)
        install_deps
        autoreconf -fi
        build build
        check_in build
        build build-asan --enable-sanitizers
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
                check_in build-asan
        echo "== make distcheck"
        (cd build && make -s distcheck DISTCHECK_CONFIGURE_FLAGS=--enable-werror >/dev/null)
        echo "== make deb"
        (cd build && make -s deb >deb.log 2>&1 || { tail -40 deb.log >&2; exit 1; }
         dpkg-deb -c futured_*_amd64.deb | grep 'usr/sbin/futured$' >/dev/null)
        summary $(find build build-asan -name '*.trs' -not -path '*/_build/*')
        ;;
*)
        echo "usage: $0 start|check" >&2
        exit 2
        ;;
esac
