"""Synthetic faces and occluders: images that are pure functions of integers, with pixel-exact visibility.

Everything here is drawn, not read: the ArcFace 112x112 template that places parts of the face
(``face_template``), the occluders pasted on aligned faces with their exact masks (``occluders``), the face
renderer (``face_renderer``), the synthetic training and verification sets built on it (``datasets``), and
their export to the on-disk layouts the readers of :mod:`oaml.data.formats` expect (``export``,
``python -m oaml.data.synthetic.export``). They belong together because they share one geometry (the template)
and one promise: the same integers give the same image in every process, with no data on disk.

The training pipeline uses the occluders on real faces too (augmentation, occluded verification pairs).
"""
