"""flowyard-template: the scaffold of a contrib plugin (a word-count tool)."""
