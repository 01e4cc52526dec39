// Placeholder entry point until the command is written.
print("qmp-mock: not built yet")
