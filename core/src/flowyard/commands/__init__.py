"""Core CLI commands; each module is imported only when one of its commands runs."""
