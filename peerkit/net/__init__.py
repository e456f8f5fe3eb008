"""The I/O adapters: the secure channel over anyio streams, TCP dial and listen."""
