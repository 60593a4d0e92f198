"""The one decoding engine (batched prefill, key/value buffer, sampler, stop strings, streaming) and the prompt frames
around it."""
