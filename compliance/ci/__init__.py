"""welkin-evaluate, the CI gate, and the offline evaluation behind it: no Django. Imports the
leaves and rules only (and, for --resolve, the registry client)."""
