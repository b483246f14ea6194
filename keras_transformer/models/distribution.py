"""Sharding the `Transformer` with Keras's distribution API (JAX backend).

`keras.distribution.DataParallel` needs nothing from the model: every
variable is replicated and each device takes a slice of the batch. The loss
needs nothing either: `MaskedCrossEntropy` divides by the token count of
the batch it is given, and under `keras.distribution` that is the global
batch (one program over all devices), so the loss and its gradients are the
one-device figures.

`layout_map` shards the large kernels over a "model" axis of a device mesh,
for `keras.distribution.ModelParallel`:

- token embeddings [V, D] (and so the tied output projection): D; an
  untied output projection [D, V]: V;
- attention query/key/value kernels [D, N, H] and biases [N, H]: the heads N;
  the output kernel [N, H, D]: N;
- feed-forward inner kernel [D, F] and bias [F]: F; outer kernel [F, D]: F.

Everything else (layer norms, output biases) is replicated. The sizes
sharded (heads, d_model, d_ff, the vocabulary) must divide by the size of
the mesh's "model" axis.
"""

import keras


def layout_map(device_mesh, model_dim: str = "model") -> "keras.distribution.LayoutMap":
    """A `keras.distribution.LayoutMap` for `Transformer` (and the layers'
    own stacks) on `device_mesh`, sharding over its axis `model_dim`.

    Example, on 2 devices:

        mesh = keras.distribution.DeviceMesh((1, 2), ("batch", "model"), keras.distribution.list_devices())
        keras.distribution.set_distribution(
            keras.distribution.ModelParallel(layout_map=layout_map(mesh), batch_dim_name="batch"))
        model = Transformer(...)  # made after the distribution is set
    """
    if model_dim not in device_mesh.axis_names:
        raise ValueError(
            f"`model_dim` must be an axis of the device mesh {tuple(device_mesh.axis_names)}. "
            f"Received: model_dim={model_dim!r}"
        )
    layouts = keras.distribution.LayoutMap(device_mesh)
    layouts[r".*embedding.*/embeddings"] = (None, model_dim)
    layouts[r".*attention.*/(query|key|value)_kernel"] = (None, model_dim, None)
    layouts[r".*attention.*/(query|key|value)_bias"] = (model_dim, None)
    layouts[r".*attention.*/output_kernel"] = (model_dim, None, None)
    layouts[r".*feed_forward.*/inner/kernel"] = (None, model_dim)
    layouts[r".*feed_forward.*/inner/bias"] = (model_dim,)
    layouts[r".*feed_forward.*/outer/kernel"] = (model_dim, None)
    layouts[r".*output_projection/kernel"] = (None, model_dim)
    return layouts
