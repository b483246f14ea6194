"""What the layer and model tests need of the backend, on TensorFlow and on JAX.

The tests themselves are written in `keras.ops` and NumPy; the few things
`keras.ops` has no word for (compiling a function, taking gradients) are here,
one implementation per backend. On TensorFlow each is what the tests did
before they ran on JAX: `tf.function` (with `jit_compile=True` for XLA) and
`tf.GradientTape`.
"""

import keras


def is_tensorflow():
    return keras.backend.backend() == "tensorflow"


def _jax_platform():
    """JAX's platform ("cpu", "gpu", "tpu") when the backend is JAX, else None."""
    if keras.backend.backend() != "jax":
        return None
    import jax

    return jax.default_backend()


def jax_on_gpu():
    """Whether the backend is JAX computing on a GPU."""
    return _jax_platform() == "gpu"


def jax_on_cpu():
    """Whether the backend is JAX computing on the CPU."""
    return _jax_platform() == "cpu"


def dtype(x):
    """The dtype of a tensor (or a variable) as Keras names it: "float32", "bfloat16", ..."""
    return keras.backend.standardize_dtype(x.dtype)


def to_numpy(x):
    """A tensor or a variable as a NumPy array."""
    return keras.ops.convert_to_numpy(x)


def keras_mask(x):
    """The Keras mask a layer attached to `x`, or None. (JAX arrays take no
    attributes: Keras keeps their masks beside them, keyed by the array.)"""
    return keras.src.backend.get_keras_mask(x)


def graph(fn):
    """`fn` traced once and run as a graph: `tf.function` on TensorFlow,
    `jax.jit` on JAX. Tensor arguments are traced (not constants)."""
    if is_tensorflow():
        import tensorflow as tf

        return tf.function(fn)
    import jax

    return jax.jit(fn)


def compiled(fn):
    """`fn` compiled by XLA: `tf.function(jit_compile=True)` on TensorFlow,
    `jax.jit` on JAX. `fn` may call layers whose only state is their weights
    (read, not written); for a layer that updates state of its own (a
    seeded dropout) use `compiled_call`."""
    if is_tensorflow():
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    import jax

    return jax.jit(fn)


def compiled_call(layer, **call_kwargs):
    """`layer(*args, **call_kwargs)` compiled by XLA; each call updates the
    layer's state (a dropout's seed) as an eager call does.

    On JAX a variable cannot be assigned inside `jax.jit` (the traced value
    would leak out), so the jitted function is the layer's `stateless_call`,
    and the new non-trainable values are assigned after it.
    """
    if is_tensorflow():
        return compiled(lambda *args: layer(*args, **call_kwargs))
    import jax

    @jax.jit
    def stateless(trainable, non_trainable, *args):
        return layer.stateless_call(trainable, non_trainable, *args, **call_kwargs)

    def call(*args):
        outputs, non_trainable = stateless(
            [v.value for v in layer.trainable_variables], [v.value for v in layer.non_trainable_variables], *args
        )
        for variable, value in zip(layer.non_trainable_variables, non_trainable):
            variable.assign(value)
        return outputs

    return call


def gradients(layer, forward, x):
    """Gradients of a scalar loss computed through `layer` from the input `x`.

    `forward(call, x)` returns `(loss, output)`, where `call` is to be called
    as the layer would be (on JAX it is the layer's `stateless_call` with the
    weights as traced values, so the gradients with respect to them can be
    taken). Returns `(output, gradient with respect to x, [gradient with
    respect to each of layer.trainable_variables])`, as NumPy arrays. (On
    JAX the layer's non-trainable state, a dropout's seed, is read, not
    advanced: the call is stateless.)
    """
    variables = list(layer.trainable_variables)
    if is_tensorflow():
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss, output = forward(layer, x)
        grads = tape.gradient(loss, [x, *variables])
        return to_numpy(output), to_numpy(grads[0]), [to_numpy(g) for g in grads[1:]]
    import jax

    non_trainable = [v.value for v in layer.non_trainable_variables]

    def loss_fn(x, trainable):
        def call(*args, **kwargs):
            return layer.stateless_call(trainable, non_trainable, *args, **kwargs)[0]

        return forward(call, x)

    (_, output), (grad_x, grad_weights) = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))(
        jax.numpy.asarray(x), [v.value for v in variables]
    )
    return to_numpy(output), to_numpy(grad_x), [to_numpy(g) for g in grad_weights]



def weight_gradients(layer, loss_of):
    """`(loss, [gradient for each of layer.trainable_variables])` as NumPy
    arrays, for the scalar `loss_of(call)`, where `call` is called as the
    layer would be (on JAX, its `stateless_call` on traced weights).
    TensorFlow's sparse embedding gradients come back summed, dense."""
    variables = list(layer.trainable_variables)
    if is_tensorflow():
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_of(layer)
        grads = tape.gradient(loss, variables)
        return to_numpy(loss), [None if g is None else to_numpy(tf.convert_to_tensor(g)) for g in grads]
    import jax

    non_trainable = [v.value for v in layer.non_trainable_variables]

    def loss_fn(trainable):
        def call(*args, **kwargs):
            return layer.stateless_call(trainable, non_trainable, *args, **kwargs)[0]

        return loss_of(call)

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))([v.value for v in variables])
    return to_numpy(loss), [to_numpy(g) for g in grads]
