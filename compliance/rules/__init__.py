"""Pure rules, standard library only: may import the leaves (vocabulary, params, crypto, bounded, workers), never Django."""
