"""A test plugin: a tool, a provider alias, an event listener and a CLI command."""
