"""The training and validation pipeline: how already constructed datasets become the model's batches.

The LightningDataModule (``datamodule``) and what it is made of: augmentations of the main stream
(``augment``), items keyed by their place in the run so that a resume draws the same (``item_keys``),
identity-balanced P x K batches (``sampler``), the occlusion stream that mixes mask-set and main-stream faces
(``mask_stream``), whole pairs per batch and per rank for validation (``pair_sharding``), the occluded twin
of a verification set (``occluded_pairs``), which sets a run validates on (``val_sets``) and the single point
where uint8 RGB becomes network input (``normalize``). They belong together because none of them parses a
file or renders a face: they decide order, randomness, mixing and sharding, from the config.
"""
