"""Stable Diffusion 3.5 (Large, Large Turbo, Medium): text-to-image, img2img and inpaint.

``spec`` declares the family (settings, components, license, tiny builder); ``requests`` parses
its own options (the T5 sequence length and placement; the requests themselves are the shared
``backends.runtime.image_requests``); ``backend`` runs diffusers' SD3 pipelines with each
component borrowed from the memory manager for its stage (``text`` encodes the prompt, ``pipes``
holds the pipeline classes, ``images`` the img2img step count and the inpaint overlay, ``memory``
the working-memory estimates); ``tiny`` builds the random-weight models.
"""
