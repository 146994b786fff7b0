"""The CogVideo model: tokenizers and the two transformer stages (filled in by the training issues)."""
