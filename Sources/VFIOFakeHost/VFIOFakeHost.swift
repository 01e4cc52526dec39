// VFIOFakeHost: kernel-shaped sysfs/dev trees for tests and qmp-mock --fake-host.
