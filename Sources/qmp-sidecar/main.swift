// Placeholder entry point until the command is written.
print("qmp-sidecar: not built yet")
