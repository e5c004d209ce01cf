"""The model repository: what a name means, how a version is fed, and the commands that write versions.

Entry points (import them from their modules; this package imports nothing, so a scoring process pays only
for what it uses):

- ``repository.ModelRepository``: versions, ``resolve_version`` (what ``NAME`` means), ``load``, ``promote``.
- ``ref.ModelRef``: ``NAME[:VERSION]``, parsed once where it enters.
- ``manifest.ModelManifest``: how to feed a version (input, preprocessing, output).
- ``default_version``: the promoted default's pointer file, written atomically.
- ``add.add_model`` (``streamscore models add``), ``quantize.quantize_model`` (``models quantize``).
- ``_onnx_graph``: machinery: what an ONNX file asks for, external-data checks.
"""
