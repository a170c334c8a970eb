"""How closely a path's answers agree with the backbone's on the original frames.

``agreement``: top-1 / top-5 / cosine agreement of classifier outputs; ``task_agreement``: the
other tasks' (boxes, masks, action scores, captions' BLEU); ``clip_score``: captions' CLIP-score;
``h264``: libx264 at a target bpp, the pixel baseline; ``pixel_paths``: full INR decode and
H.264 at equal bpp, scored the same way as the NVP path.
"""
