"""Stable Diffusion XL 1.0 (base, with the optional refiner): text-to-image, img2img and inpaint.

``spec`` declares the family (settings, components, license, tiny builder); ``requests`` parses
its own options (the refiner and its hand-over point; the requests themselves are the shared
``backends.runtime.image_requests``); ``backend`` runs a job with diffusers' SDXL pipelines, each
stage on the components the memory manager lends it (``stages``: the stages; ``pipelines``: the
pipeline classes and how a stage's pipeline is assembled; ``vae``: the VAE's encode, decode and
inpaint overlay; ``steps``: the base / refiner step split; ``memory``: the working-memory
estimates); ``tiny`` builds the random-weight models.
"""
