"""Datasets on disk and their readers: each module knows one layout and turns its files into items.

InsightFace RecordIO (``recordio_format``: the format, reader and writer; ``recordio``: the training set over
it), identity folders (``image_folder``), verification pairs in ``.bin`` files and pair lists
(``verification``), and the niqab mask set (``niqab``). Shared by the readers: decoding to RGB uint8 with the
file's name in every error (``decode``) and what a training set does with an unreadable image
(``bad_images``). They belong together because each answers "what is in this file and is it readable",
whatever the run then does with the items.
"""
