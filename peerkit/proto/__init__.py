"""The sans-IO protocol core: Noise, framing, CBOR messages, the connection state machine, signed records.

Nothing here does I/O, reads a clock or starts a task: bytes and the current time go in, events and
bytes come out.
"""
