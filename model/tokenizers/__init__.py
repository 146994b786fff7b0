"""The tokenizers: captions to text pieces (SentencePiece), frames to codes (an FSQ or VQ autoencoder), their
training, and the encoding of every clip of the lake into token rows."""
