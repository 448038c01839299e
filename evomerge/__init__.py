"""evomerge: evolve LLM merge recipes."""
