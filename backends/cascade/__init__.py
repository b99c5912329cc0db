"""Stable Cascade (stages C, B and A): text-to-image, image variation and img2img.

``spec`` declares the family (settings, components, license, tiny builder); ``requests`` validates
inputs; ``backend`` runs the stages on our own sampling loop (``sampling``) with what both image
sides share in ``stages``; ``image`` adds the CLIP image encoder, the EfficientNet encoder
(``effnet``) and the previewer (``previewer``); ``tiny`` builds the random-weight models.
"""
