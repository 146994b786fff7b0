"""Trained models for their users: `TextToVideo` (captions to videos), the command line, the MLflow registry and
the pyfuncs registered there."""
