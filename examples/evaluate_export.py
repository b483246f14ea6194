"""Score an exported SavedModel through serving_default: `keras_transformer.recipes.evaluate_export` (`--help`)."""

import sys

from keras_transformer.recipes.evaluate_export import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
