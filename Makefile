# One entry point for people and CI. `make demo` and `make test` are the README's two set-up commands.
SWIFT ?= swift
CONFIG ?= debug

.PHONY: all deps build release demo test lint format bench fuzz vfio-lab clean-lab

all: build

deps:
	@scripts/install-deps.sh

build: deps
	$(SWIFT) build -c $(CONFIG)

release: deps
	$(SWIFT) build -c release

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

lint:
	$(SWIFT) format lint --strict -r Package.swift Sources Tests

format:
	$(SWIFT) format format -i -r Package.swift Sources Tests

# Benchmarks are programs that print figures and ratios against a baseline measured in the same run.
bench: release
	cc -O2 -Wall -o .build/release/floor-proxy bench/floor-proxy.c
	.build/release/qmp-bench framer
	.build/release/qmp-bench proxy
	.build/release/qmp-bench release

fuzz: deps
	fuzz/run.sh 60

# The proof on the real vfio-pci driver in a nested VM (installs a kernel; ~2 min after that).
vfio-lab: release
	lab/run.sh
