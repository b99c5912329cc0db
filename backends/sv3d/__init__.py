"""SV3D_u and SV3D_p: orbit videos of an object from one picture.

``spec`` declares the family; ``requests`` validates inputs and the camera path; ``backend`` runs
the EDM sampler; ``convert``, ``names`` and ``unet`` turn the single sgm checkpoints into diffusers
modules; ``outputs`` writes the orbit's MP4, contact sheet and frames; ``tiny`` builds the
random-weight models. It uses SVD's public ``backends.svd.ops`` and ``backends.svd.memory``: SV3D
is SVD's UNet fine-tuned, so the same pipeline steps and estimates apply.
"""
