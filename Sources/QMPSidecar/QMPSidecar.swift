// QMPSidecar: see docs/ARCHITECTURE.md for what belongs here.
