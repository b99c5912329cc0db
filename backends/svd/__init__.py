"""Stable Video Diffusion (SVD, SVD-XT): image to video.

``spec`` declares the family; ``requests`` validates inputs; ``backend`` runs our own sampling
loop; ``tiny`` builds the random-weight models. Two modules are public to families built on the
same spatio-temporal UNet (SV3D): ``ops``, the tensor steps that must match the stock pipeline bit
for bit, and ``memory``, the working-memory estimates of the UNet, VAE and CLIP encoder.
"""
