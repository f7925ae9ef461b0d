"""cooplib: cooperative (online) knowledge distillation, one Learner protocol, one loop.

Layers, each importing only those below it (checked by `lint-imports`, pyproject.toml):
book > report > analysis > engine > methods > data | models | losses > base.
"""
__version__ = "0.1.0"
