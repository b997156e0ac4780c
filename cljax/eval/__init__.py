"""cljax.eval."""
