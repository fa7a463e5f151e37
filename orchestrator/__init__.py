"""tunectl: run LLM fine-tune jobs across providers, durably, from dataset to deployed model."""

__version__ = "0.1.0"
