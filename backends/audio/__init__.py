"""Stable Audio Open 1.0: text to 44.1 kHz stereo audio, up to 47 s.

``spec`` declares the family (settings, components, license, tiny builder); ``requests`` validates
``/generate_audio``'s inputs; ``backend`` runs diffusers' ``StableAudioPipeline`` with each
component borrowed from the memory manager for its stage (``text`` runs T5, ``pipes`` assembles
the pipeline for the denoising stage and folds the VAE's weight norm, ``memory`` the
working-memory estimates); ``tiny`` builds the random-weight models.
"""
