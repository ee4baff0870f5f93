"""FLOP counting from a Keras model's layers (the convention of issue 4).

One multiply-add is 2 FLOPs. Only the layers that do multiply-adds are counted: Conv2D
(including its grouped form), DepthwiseConv2D, SeparableConv2D, Conv1D/3D and Dense; bias adds,
batch norm, activations, pooling and rescaling are elementwise and left out (they are a few
percent at most for these nets). A training step is counted as 3x the forward pass
(forward, plus backward to activations and to weights).
"""

from __future__ import annotations

import math


def _shape(tensor_or_shape) -> tuple:
    shape = getattr(tensor_or_shape, "shape", tensor_or_shape)
    return tuple(shape)


def layer_flops(layer) -> int:
    """Forward FLOPs for one example through one layer (0 for layers without multiply-adds)."""
    from keras import layers

    try:
        out_shape = _shape(layer.output)[1:]
        in_shape = _shape(layer.input)[1:]
    except (AttributeError, ValueError):
        return 0
    if isinstance(layer, layers.DepthwiseConv2D):
        k = math.prod(layer.kernel_size)
        return 2 * math.prod(out_shape) * k
    if isinstance(layer, layers.SeparableConv2D):
        k = math.prod(layer.kernel_size)
        c_in = in_shape[-1]
        depth_mult = layer.depth_multiplier
        spatial = math.prod(out_shape[:-1])
        return 2 * spatial * (c_in * depth_mult * k + c_in * depth_mult * out_shape[-1])
    if isinstance(layer, (layers.Conv1D, layers.Conv2D, layers.Conv3D)):
        k = math.prod(layer.kernel_size)
        c_in = in_shape[-1] // getattr(layer, "groups", 1)
        return 2 * math.prod(out_shape) * k * c_in
    if isinstance(layer, layers.Dense):
        return 2 * math.prod(out_shape) * in_shape[-1]
    return 0


def count_flops(model) -> dict:
    """{'forward': FLOPs per image, 'train': 3x forward, 'layers': {name: forward FLOPs}}."""
    per_layer = {}
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers and not hasattr(layer, "kernel"):  # nested model
            inner = count_flops(layer)
            per_layer.update({f"{layer.name}/{k}": v for k, v in inner["layers"].items()})
            continue
        f = layer_flops(layer)
        if f:
            per_layer[layer.name] = f
    forward = int(sum(per_layer.values()))
    return {"forward": forward, "train": 3 * forward, "layers": per_layer}
