"""``gpt-scratch serve``'s parts: the HTTP app and its model (``app``), the request schema and errors (``requests``),
the batching worker (``batcher``)."""
