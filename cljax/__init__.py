"""cljax: continual, streaming and incremental learning in JAX/Flax."""

__version__ = "0.1.0"
