"""Train a Transformer on Multi30k and report BLEU: `keras_transformer.recipes.multi30k` (`--help`)."""

from keras_transformer.recipes.multi30k import main

if __name__ == "__main__":
    main()
