// Placeholder entry point until the command is written.
print("qmp-bench: not built yet")
