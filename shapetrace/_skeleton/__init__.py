"""The object's skeleton: everything needed to rebuild it in another process except module weights.

:func:`~shapetrace._skeleton.describe.describe` turns the exported object into a JSON tree (plus the files its Hugging
Face parts write with their own ``save_pretrained`` / ``save_config``); :func:`~shapetrace._skeleton.rebuild.rebuild`
turns that tree back into an object whose modules hold no storage (every parameter on torch's ``meta`` device).
Nothing is unpickled: the tree only names classes, which :mod:`shapetrace._skeleton.classes` resolves from installed
packages, never from the export folder.
"""
