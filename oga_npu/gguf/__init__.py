"""The GGUF wing: a GGUF file's own quantized blocks, read and run exactly.

- `header`: the header read alone (architecture, weight count, truncation) in 0.1 s.
- `native`: the builder's int4 weights replaced by the file's blocks (`prepare`'s build
  stage for the gguf-native recipe): `import_weights`, the driver over the modules below.
- `blocks`: a GGML type's blocks as one exact form (`BlockForm`, a decoder per type) and
  onnxruntime's layouts of it.
- `reader`: a GGUF file's tensors by name (`GGUFFile`) and their HF names and row order (`NameMap`).
- `graph`: the graph rewrite: a MatMulNBits pointed at a form, `/gguf.*` nodes rebuilding it.
- `embedding`: the token embedding as GatherBlockQuantized over the file's codes.
- `expand`: the expanded form of a gguf-native folder, made once into the cache
  (`$OGA_NPU_HOME/cache/expanded/`) and opened by `model.load` in its place.
- `write`: GGUF files written from tensors (requantization for tests and scripts).

Path: prepare -> build stage -> native.import_weights (reader, blocks, graph, embedding) ->
validate -> expand.ensure;
load -> model.check (expand.wanted, expand.finished_entry: reads only) -> model.make_files
(expand.make, when the entry is missing) -> model.open on the cached entry.
"""
