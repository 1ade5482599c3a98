"""CLI command groups. Each module defines ``register(sub)`` adding its subcommands.

Handlers import heavy modules lazily so ``weightvault --help`` starts fast.
"""
