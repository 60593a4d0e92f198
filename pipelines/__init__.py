"""gpt-scratch workflows: data, one training loop, and one module per workflow."""
