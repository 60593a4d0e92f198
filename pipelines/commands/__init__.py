"""One module per workflow of ``gpt-scratch``: ``add_arguments(parser)`` and ``run(args)``; each imports the layers
below, never another command."""
