"""The WebGPU wing: ONNX Runtime's WebGPU plugin EP and the direct decoder on it.

- `ep`: finding, registering and probing the WebGPU plugin EP (onnxruntime-ep-webgpu).
- `graphpass`: graph passes over the built model.onnx that write model.engine.onnx (same
  weights): the greedy token chosen inside the graph, step input fused.
- `engine`: the direct decoder over model.engine.onnx (greedy steps chained on the GPU).

Path: prepare (recipe's direct_decode) -> graphpass.engine_graph; load(provider="webgpu")
-> ep.register -> engine.DirectEngine when the folder has model.engine.onnx.
"""
