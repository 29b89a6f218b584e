"""Template filters (badges and labels from the vocabulary). On top: may import every
package, but needs only the leaves."""
