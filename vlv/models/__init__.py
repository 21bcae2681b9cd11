"""Model library: the toy stand-ins, the VLV encoder and the frozen decoder wrappers.

Nothing heavy is imported here, so that ``vlv.config`` and the Snakefile load fast. The toy T2I
pipeline's pixel-space VAE lives in ``vlv.models.pixel_autoencoder``; import that module before
``StableDiffusionPipeline.from_pretrained(models/toy/t2i)`` (``vlv.models.t2i`` does).
"""

# How caption embeddings reach the UNet (see ``frozen_decoder``): through the frozen CLIP text
# encoder, or through its final layer norm only.
ROUTES = ("text_encoder", "direct")
