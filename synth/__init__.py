"""synth: training data for embedding and retrieval models, generated with LLMs."""
