"""Model and run folders: what a folder is and how to open it (``folders``), tokenizers, the run folder (claim,
checkpoints, final write), the run record, the cards."""
