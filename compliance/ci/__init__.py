"""welkin-evaluate, the CI gate, and the offline evaluation behind it: the leaves and rules
only, no Django (`pip install .`). --resolve alone loads Django and collect/images, inside
the function that needs them."""
