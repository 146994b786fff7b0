"""The CogVideo model, in rooms (model/README.md): tokenizers/, cogvideo/, evaluation/, serving/; and what they
share: configs, MLflow tracking, progress bars, the process group, the training skeleton and the media files."""
