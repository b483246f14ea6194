"""One initializer instance per weight."""

import keras


def clone_initializer(initializer):
    """A new instance of `initializer` (a name, config or instance), for one
    weight.

    A Keras 3 random initializer made with `seed=None` picks its seed when
    it is created and draws statelessly from it, so one instance used for
    two weights of the same size gives both the same values. A clone made
    from the config picks a new seed (from Python's `random`, so
    `keras.utils.set_random_seed` still makes a build reproducible).

    Returned as they are: an initializer seeded with a
    `keras.random.SeedGenerator` (it draws anew at every call), a plain
    function, and a subclass without a `get_config` of its own. An integer
    seed is kept, as Keras's own layers keep it: every weight of one shape
    it initializes gets the same draw, so leave the seed None and call
    `keras.utils.set_random_seed` for a reproducible model.
    """
    initializer = keras.initializers.get(initializer)
    if not isinstance(initializer, keras.initializers.Initializer):
        return initializer
    if isinstance(getattr(initializer, "seed", None), keras.random.SeedGenerator):
        return initializer
    if type(initializer).get_config is keras.initializers.Initializer.get_config:
        # No config of its own: from_config would build a default instance.
        return initializer
    return initializer.__class__.from_config(initializer.get_config())
