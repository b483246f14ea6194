"""One initializer instance per weight."""

import keras


def clone_initializer(initializer):
    """A new instance of `initializer` (a name, config or instance).

    A Keras 3 random initializer made with `seed=None` picks its seed when
    it is created and draws statelessly from it, so one instance used for
    two weights of the same size gives both the same values. A clone made
    from the config picks a new seed (from Python's `random`, so
    `keras.utils.set_random_seed` still makes a build reproducible). An
    integer seed is kept: the user asked for that draw.
    """
    initializer = keras.initializers.get(initializer)
    return initializer.__class__.from_config(initializer.get_config())
