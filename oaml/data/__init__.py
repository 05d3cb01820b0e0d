"""Everything that turns faces into batches, in three subpackages by concern:

- :mod:`oaml.data.synthetic`: faces and occluders drawn from integers (no files): the renderer, the occluders,
  the synthetic datasets and their export to disk;
- :mod:`oaml.data.formats`: the on-disk datasets and their readers (RecordIO, identity folders, verification
  pairs, the niqab mask set), decoding and the bad-image policy;
- :mod:`oaml.data.pipeline`: how constructed datasets reach the model: augmentation, keyed items, samplers,
  pair sharding, the occlusion stream, the validation sets, normalisation and the LightningDataModule.

Import from the modules themselves (``from oaml.data.formats.recordio import RecordIODataset``); the packages
re-export nothing.
"""
