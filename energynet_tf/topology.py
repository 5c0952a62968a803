"""Keras layers and models as SCALE-Sim topology rows (`systolic.LayerShape`).

SCALE-Sim has no padding: it computes a convolution's output size as
ceil((H - R + s) / s) from the input extent H it is given. A padded convolution is
therefore given to it with the extent that makes that formula return the layer's real
output size Ho (docs/design.md §1.3): H_eff = (Ho - 1) * s + R, i.e. the padded input minus the
rows the convolution never reads. A dense layer is a 1x1 convolution on a 1x1 input.
"""

from typing import List, Optional

from energynet_tf import systolic


def _pair(value, name):
    """An int or a pair of ints as a pair of positive ints."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"Argument `{name}` must be an int or a pair of ints; "
                             f"received: {value!r}")
        pair = tuple(value)
    else:
        pair = (value, value)
    for v in pair:
        if not systolic.is_int(v) or v < 1:
            raise ValueError(f"Argument `{name}` must hold positive ints; received: {value!r}")
    return tuple(int(v) for v in pair)


def _positive_int(value, name):
    if not systolic.is_int(value) or value < 1:
        raise ValueError(f"Argument `{name}` must be a positive int; received: {value!r}")
    return int(value)


def _output_size(size, kernel, stride, padding):
    if padding == "same":
        return -(-size // stride)
    return (size - kernel) // stride + 1


def conv_layer_shape(name, input_hw, kernel_size, strides, padding, channels,
                     filters) -> systolic.LayerShape:
    """A 2-D convolution as SCALE-Sim sees it.

    Args:
      name: layer name.
      input_hw: input height and width (an int for square inputs).
      kernel_size: kernel height and width (an int for square kernels).
      strides: the stride, an int or an equal pair (SCALE-Sim has one stride per layer).
      padding: "same" or "valid", as in Keras.
      channels: input channels.
      filters: output channels.

    Returns:
      A `systolic.LayerShape` whose ifmap extent is (Ho - 1) * s + R by (Wo - 1) * s + S,
      so that SCALE-Sim's ceil((H - R + s) / s) is the real output size: for a 3x3
      stride-2 'same' conv on 32x32 that is 33, for a 1x1 stride-2 one 31, for a 3x3
      stride-1 one 34.

    Raises:
      ValueError: on a non-positive size, unequal strides, an unknown padding, or a
        'valid' kernel larger than the input.
    """
    h, w = _pair(input_hw, "input_hw")
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(strides, "strides")
    if sh != sw:
        raise ValueError(f"Argument `strides` must be equal in both directions (SCALE-Sim has "
                         f"one stride per layer); received: {strides!r}")
    if not isinstance(padding, str) or padding.lower() not in ("same", "valid"):
        raise ValueError(f"Argument `padding` must be 'same' or 'valid'; received: {padding!r}")
    padding = padding.lower()
    channels = _positive_int(channels, "channels")
    filters = _positive_int(filters, "filters")
    if padding == "valid" and (kh > h or kw > w):
        raise ValueError(f"Argument `kernel_size` {kernel_size!r} is larger than the input "
                         f"{input_hw!r} with 'valid' padding")
    ho = _output_size(h, kh, sh, padding)
    wo = _output_size(w, kw, sw, padding)
    return systolic.LayerShape(name=str(name), ifmap_h=(ho - 1) * sh + kh,
                               ifmap_w=(wo - 1) * sw + kw, filter_h=kh, filter_w=kw,
                               channels=channels, num_filters=filters, stride=sh)


def dense_layer_shape(name, in_features, units) -> systolic.LayerShape:
    """A dense layer as SCALE-Sim sees it: a 1x1 convolution on a 1x1 input.

    Args:
      name: layer name.
      in_features: input features.
      units: output units.

    Returns:
      A `systolic.LayerShape`.

    Raises:
      ValueError: on a non-positive size.
    """
    return systolic.LayerShape(name=str(name), ifmap_h=1, ifmap_w=1, filter_h=1, filter_w=1,
                               channels=_positive_int(in_features, "in_features"),
                               num_filters=_positive_int(units, "units"), stride=1)


def _static_dims(input_shape, rank, what):
    shape = tuple(input_shape)
    if len(shape) != rank or any(d is None for d in shape[1:]):
        raise ValueError(f"Argument `input_shape` of {what} must be a rank-{rank} shape with "
                         f"known non-batch dimensions; received: {input_shape!r}")
    return [int(d) for d in shape[1:]]


def layer_shape(layer, input_shape, name: Optional[str] = None) -> systolic.LayerShape:
    """A Keras Conv2D or Dense layer as SCALE-Sim sees it.

    Args:
      layer: a `keras.layers.Conv2D` (groups 1, no dilation) or `keras.layers.Dense`.
      input_shape: the layer's input shape, batch dimension first.
      name: the row name (default: the layer's name).

    Returns:
      A `systolic.LayerShape`. A Dense layer on a rank-3 (batch, T, F) or rank-4
      (batch, H, W, F) input is a 1x1 convolution over T x 1 or H x W positions.

    Raises:
      ValueError: for another layer type, dilation, groups, or an incomplete shape.
    """
    import keras  # Imported here: the topology helpers above do not need Keras.

    name = layer.name if name is None else name
    if isinstance(layer, keras.layers.Conv2D):
        if tuple(layer.dilation_rate) != (1, 1):
            raise ValueError(f"Layer {layer.name!r}: dilated convolutions are not supported; "
                             f"received dilation_rate={layer.dilation_rate!r}")
        if getattr(layer, "groups", 1) != 1:
            raise ValueError(f"Layer {layer.name!r}: grouped convolutions are not supported; "
                             f"received groups={layer.groups!r}")
        dims = _static_dims(input_shape, 4, f"Conv2D layer {layer.name!r}")
        if layer.data_format == "channels_first":
            channels, h, w = dims
        else:
            h, w, channels = dims
        return conv_layer_shape(name, (h, w), tuple(layer.kernel_size), tuple(layer.strides),
                                layer.padding, channels, layer.filters)
    if isinstance(layer, keras.layers.Dense):
        shape = tuple(input_shape)
        if len(shape) == 2:
            return dense_layer_shape(name, _static_dims(shape, 2, f"Dense layer {layer.name!r}")[0],
                                     layer.units)
        if len(shape) in (3, 4):
            dims = _static_dims(shape, len(shape), f"Dense layer {layer.name!r}")
            h, w = (dims[0], 1) if len(dims) == 2 else (dims[0], dims[1])
            return systolic.LayerShape(name=str(name), ifmap_h=h, ifmap_w=w, filter_h=1,
                                       filter_w=1, channels=dims[-1], num_filters=layer.units,
                                       stride=1)
        raise ValueError(f"Argument `input_shape` of Dense layer {layer.name!r} must have "
                         f"rank 2, 3 or 4; received: {input_shape!r}")
    raise ValueError(f"Argument `layer` must be a keras.layers.Conv2D or Dense; received: "
                     f"{type(layer).__name__} {getattr(layer, 'name', '')!r}")


def model_topology(model, input_shape=None) -> List[systolic.LayerShape]:
    """Every Conv2D and Dense call of a Keras model, in execution order, as topology rows.

    The model is traced once symbolically (a `tf.function` concrete function, so both
    branches of a `tf.cond` gate are traced and nothing runs), recording the input shape
    of every Conv2D and Dense call, including those inside nested models and custom
    layers. A layer called several times gives several rows (`name`, `name_1`, ...).

    Args:
      model: a built `keras.Model` (functional, sequential or subclassed).
      input_shape: the input shape(s) without the batch dimension; default: the model's
        `inputs`.

    Returns:
      A list of `systolic.LayerShape`.

    Raises:
      ValueError: if the input shape is unknown, or a Conv2D is dilated or grouped.
    """
    import keras
    import tensorflow as tf

    if not isinstance(model, keras.Model):
        raise ValueError(f"Argument `model` must be a keras.Model; received: {model!r}")
    if input_shape is None:
        try:
            inputs = model.inputs
        except (AttributeError, ValueError):
            inputs = None
        if not inputs:
            raise ValueError("Argument `input_shape` is required for a model without `inputs` "
                             f"(e.g. subclassed); model: {model.name!r}")
        specs = [tf.TensorSpec(x.shape, x.dtype) for x in inputs]
    else:
        shapes = input_shape if (isinstance(input_shape, (list, tuple)) and input_shape and
                                 isinstance(input_shape[0], (list, tuple))) else [input_shape]
        specs = [tf.TensorSpec((None,) + tuple(s), tf.float32) for s in shapes]

    targets = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
               if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]

    def forward(x):
        return model(x, training=False)

    calls, _ = trace_layer_calls(forward, specs[0] if len(specs) == 1 else specs, targets)
    rows, seen = [], {}
    for layer, shape in calls:
        count = seen.get(id(layer), 0)
        seen[id(layer)] = count + 1
        rows.append(layer_shape(layer, shape,
                                name=layer.name if count == 0 else f"{layer.name}_{count}"))
    return rows


def trace_layer_calls(fn, input_signature, layers):
    """Records every call of `layers` made while tracing `fn`, in order, with its input shape.

    `fn` is traced once symbolically (a `tf.function` concrete function: both
    branches of every `tf.cond` are traced and nothing runs). A layer called
    inside both branches of a `tf.cond`, or several times, gives several
    records.

    Args:
        fn: a function of one argument (a tensor or a list of tensors).
        input_signature: a `tf.TensorSpec` (or a list of them) for that argument.
        layers: the Keras layers to record.

    Returns:
        `(calls, graph)`: the list of `(layer, input shape tuple)` and the
        traced `tf.Graph`.
    """
    import tensorflow as tf

    calls = []

    def recorder(layer, call):
        def wrapped(inputs, *args, **kwargs):
            calls.append((layer, tuple(inputs.shape)))
            return call(inputs, *args, **kwargs)
        return wrapped

    for layer in layers:
        # An instance attribute shadows the method: Keras invokes `self.call`.
        object.__setattr__(layer, "call", recorder(layer, layer.call))
    try:
        graph = tf.function(fn, autograph=True).get_concrete_function(input_signature).graph
    finally:
        for layer in layers:
            object.__delattr__(layer, "call")
    return calls, graph
