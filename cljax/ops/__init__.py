"""cljax.ops."""
