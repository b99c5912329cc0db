"""StableLM chat (2 Zephyr 1.6B, Zephyr 3B, Tuned Alpha), streamed token by token.

``spec`` declares the family; ``requests`` validates the message, history and sampling; ``prompt``
formats and fits the conversation into the context; ``decode`` is our KV-cache decode loop;
``backend`` ties them to the memory manager; ``tiny`` builds the random-weight model.
"""
