"""cooplib: cooperative (online) knowledge distillation, one Learner protocol, one loop."""
__version__ = "0.1.0"
