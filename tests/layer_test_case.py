"""The shared layer-test harness every layer test calls."""

import keras
import numpy as np

from tests.backend import dtype
from tests.backend import to_numpy


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def _symbolic_inputs(inputs):
    return tuple(
        keras.Input(shape=x.shape[1:], dtype=x.dtype.name if hasattr(x.dtype, "name") else x.dtype)
        for x in inputs
    )


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    expected_output_shape,
    expected_num_trainable_weights,
    call_kwargs=None,
    run_fit=True,
    run_mixed_precision=True,
):
    """Checks what every layer of the library promises.

    - `get_config` / `from_config` round trip, through Keras serialization;
    - trainable weight count;
    - eager and symbolic (functional) output shapes, float32 output;
    - one `fit` step in a functional model changes the weights;
    - under `mixed_float16` and `mixed_bfloat16` the output has the compute
      dtype and the variables stay float32.
    """
    call_kwargs = call_kwargs or {}
    inputs = _as_tuple(input_data)

    # Config round trip.
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    restored = layer_cls.from_config(config)
    assert restored.get_config() == config
    serialized = keras.saving.serialize_keras_object(layer)
    assert keras.saving.deserialize_keras_object(serialized).get_config() == config

    # Eager call: shapes, dtypes, weights.
    outputs = layer(*inputs, **call_kwargs)
    assert tuple(outputs.shape) == tuple(expected_output_shape), outputs.shape
    assert dtype(outputs) == "float32", outputs.dtype
    assert len(layer.trainable_weights) == expected_num_trainable_weights, [
        w.path for w in layer.trainable_weights
    ]
    assert len(restored.weights) == 0  # nothing built before the first call

    # Symbolic call in the functional API.
    symbolic = _symbolic_inputs(inputs)
    symbolic_outputs = layer_cls(**init_kwargs)(*symbolic, **call_kwargs)
    assert tuple(symbolic_outputs.shape[1:]) == tuple(expected_output_shape[1:])

    # One fit step.
    if run_fit:
        fresh = layer_cls(**init_kwargs)
        model = keras.Model(symbolic, fresh(*symbolic, **call_kwargs))
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        before = [to_numpy(w).copy() for w in fresh.trainable_weights]
        target = np.random.normal(size=expected_output_shape).astype("float32")
        model.fit(inputs, target, batch_size=expected_output_shape[0], epochs=1, verbose=0)
        changed = [
            not np.allclose(b, to_numpy(w)) for b, w in zip(before, fresh.trainable_weights)
        ]
        assert any(changed)

    # Mixed precision.
    if run_mixed_precision:
        for policy in ("mixed_float16", "mixed_bfloat16"):
            mixed = layer_cls(**init_kwargs, dtype=policy)
            out = mixed(*inputs, **call_kwargs)
            assert dtype(out) == mixed.compute_dtype, (policy, out.dtype)
            assert all(w.dtype == "float32" for w in mixed.weights)
            assert np.all(np.isfinite(to_numpy(keras.ops.cast(out, "float32"))))
    return layer, outputs
