"""Data: random-access sources (``sources``) and streams laid out in time steps (``streams``)."""

from cljax.data.catalog import load, names  # noqa: F401
from cljax.data.sources import ArraySource, DataError, Dataset  # noqa: F401
from cljax.data.streams import (ORDERINGS, Stream, array_batches, batches, chunks,  # noqa: F401
                                make_stream)
