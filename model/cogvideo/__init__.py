"""The CogVideo transformer: its sequence layout and masks, the model, the token rows it trains on, the training
loop, sampling of both stages, and finding trained stages."""
