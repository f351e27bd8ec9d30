"""flowyard-wordcount: an example plugin (see docs/plugins.md)."""
