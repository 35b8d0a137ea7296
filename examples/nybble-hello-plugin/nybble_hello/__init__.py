"""A minimal third-party nybble plugin (see docs/plugins.md)."""
