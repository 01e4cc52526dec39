# One entry point for people and CI. `make demo` and `make test` are the README's two set-up commands.
SWIFT ?= swift
CONFIG ?= debug

.PHONY: all deps build release static install demo test test-install test-libvirt lint format bench bench-instructions bench-footprint fuzz vfio-lab clean-lab

all: build

deps:
	@scripts/install-deps.sh

build: deps
	$(SWIFT) build -c $(CONFIG)

release: deps
	$(SWIFT) build -c release

# `make install` (PREFIX, DESTDIR, SYSCONFDIR...): a qmp-sidecar with the Swift standard library linked
# statically (at run time it needs only glibc and libjansson, no Swift toolchain), the libvirt
# emulator wrapper, its config (kept if one is there) and the systemd units. Built in a scratch path
# of its own so it never mixes with the dynamic builds in .build/.
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
LIBEXECDIR ?= $(PREFIX)/libexec/qmp-sidecar
SYSCONFDIR ?= /etc
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
DOCDIR ?= $(PREFIX)/share/doc/qmp-sidecar
STATIC_BUILD ?= .build-static
SUBST = sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@LIBEXECDIR@|$(LIBEXECDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' \
	-e 's|/usr/local/bin/qmp-sidecar|$(BINDIR)/qmp-sidecar|g'

# The Swift runtime's own C++ parts need libstdc++: the driver links it with a plain `-lstdc++`, so a
# linker script named libstdc++.so, searched first, points that at the static archive (and
# -static-libgcc takes the unwinder from libgcc_eh.a): no libstdc++.so or libgcc_s.so at run time.
static: deps
	@mkdir -p $(STATIC_BUILD)/cxx
	@echo "INPUT($$(clang -print-file-name=libstdc++.a))" > $(STATIC_BUILD)/cxx/libstdc++.so
	$(SWIFT) build -c release --static-swift-stdlib --scratch-path $(STATIC_BUILD) --product qmp-sidecar \
		-Xlinker -L$(CURDIR)/$(STATIC_BUILD)/cxx -Xswiftc -Xclang-linker -Xswiftc -static-libgcc

install: static
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBEXECDIR) $(DESTDIR)$(SYSCONFDIR)/qmp-sidecar \
		$(DESTDIR)$(SYSTEMDUNITDIR) $(DESTDIR)$(DOCDIR)
	install -m 0755 $(STATIC_BUILD)/release/qmp-sidecar $(DESTDIR)$(BINDIR)/qmp-sidecar
	$(SUBST) contrib/libvirt/qmp-sidecar-qemu > $(DESTDIR)$(LIBEXECDIR)/qmp-sidecar-qemu
	chmod 0755 $(DESTDIR)$(LIBEXECDIR)/qmp-sidecar-qemu
	$(SUBST) contrib/libvirt/libvirt.conf > $(DESTDIR)$(DOCDIR)/libvirt.conf.example
	test -e $(DESTDIR)$(SYSCONFDIR)/qmp-sidecar/libvirt.conf || \
		install -m 0644 $(DESTDIR)$(DOCDIR)/libvirt.conf.example $(DESTDIR)$(SYSCONFDIR)/qmp-sidecar/libvirt.conf
	for unit in contrib/systemd/qmp-sidecar@.service contrib/systemd/qmp-sidecar@.socket; do \
		$(SUBST) $$unit > $(DESTDIR)$(SYSTEMDUNITDIR)/$${unit##*/} || exit 1; done
	install -m 0644 contrib/libvirt/README.md $(DESTDIR)$(DOCDIR)/libvirt.md

# The main job: qmp-mock with a two-device IOMMU group, qmp-sidecar in front, a client unplugging
# both devices; prints the event timeline.
demo: build
	examples/demo/run-demo.sh .build/$(CONFIG)

# Every test, against real QEMU 7.2 and python qemu.qmp (installed by `deps`); nothing may skip.
# The two 64 MiB differential cases take about 5 minutes (QEMU reads such input a byte at a time):
# they run on their own afterwards, so they do not hold the test pool's threads while others run.
SLOW_TESTS = sizeLimits|messageSizeLimit
test: deps
	QMP_SIDECAR_REQUIRE_QEMU=1 $(SWIFT) test --skip '$(SLOW_TESTS)'
	QMP_SIDECAR_REQUIRE_QEMU=1 QMP_SIDECAR_SLOW_QEMU_TESTS=1 $(SWIFT) test --filter '$(SLOW_TESTS)'
	$(MAKE) test-install test-libvirt

# `make install DESTDIR=...` gives a binary that needs no Swift runtime (ldd lists no libswift*).
test-install: static
	contrib/libvirt/tests/install.sh

# Real libvirt 9.0 with the wrapper as <emulator>, in a private mount and network namespace (root).
test-libvirt: static
	contrib/libvirt/tests/e2e.sh

lint:
	$(SWIFT) format lint --strict -r Package.swift Sources Tests

format:
	$(SWIFT) format format -i -r Package.swift Sources Tests

# Benchmarks are programs that print figures and ratios against a baseline measured in the same run.
bench: release
	cc -O2 -Wall -o .build/release/floor-proxy bench/floor-proxy.c
	.build/release/qmp-bench framer
	.build/release/qmp-bench router
	.build/release/qmp-bench proxy
	.build/release/qmp-bench release

# User-space instructions per round trip (valgrind), and the functions they go to: compares builds.
bench-instructions: release
	bench/instructions.sh 30

# What a cold code or data line costs in user CPU on this machine, on the C floor itself.
bench-footprint:
	bench/footprint.sh

fuzz: deps
	fuzz/run.sh 60

# The proof on the real vfio-pci driver in a nested VM (installs a kernel; ~2 min after that).
vfio-lab: release static
	lab/run.sh
