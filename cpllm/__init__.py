"""cpllm: CP-LLM video quality assessment in JAX/Flax."""
