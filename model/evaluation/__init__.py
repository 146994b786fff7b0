"""Does a model follow its captions? Videos for held-out prompts read back from their pixels, the gate a candidate
must pass, and the diagnosis that says why a model does or does not learn."""
