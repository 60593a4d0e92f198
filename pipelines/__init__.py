"""The workflows around the model: ``gpt-scratch <workflow>``, in layers (``import-linter`` checks them):

* ``cli`` -- the command table;
* ``commands`` -- one module per workflow, read top to bottom; no command imports another;
* ``serving``, ``evals``, ``formats`` -- the services commands compose: the HTTP API; evaluations; imports and exports;
* ``training``, ``decoding`` -- the one training loop (losses, precision, LoRA) and the one decoding engine;
* ``runs`` -- model and run folders: their kinds, opening a model or tokenizer, claiming and writing a run folder,
  the run record, checkpoints, the cards;
* ``data`` -- every input format, token streams, tables, instruction records, collates;
* ``settings``, ``hub``, ``fs``, ``progress``, ``errors`` -- the settings schema, the Hugging Face Hub, files that
  appear whole, progress reports, the one user-facing error.
"""
